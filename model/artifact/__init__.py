"""The model artifact and running it: the folder with its sha256 manifest (written, verified before
any load), the classifier network (encoder plus intent head), ONNX Runtime over ``model.onnx``, and
``IntentPredictor``, which turns texts into intents, confidences and fallback flags. Training
writes artifacts, serving and evaluation run them; neither is needed to read one.

Imports: ``model.core`` only.
"""
