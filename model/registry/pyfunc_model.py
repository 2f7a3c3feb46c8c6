"""MLflow pyfunc wrapper, logged as "model from code" so nothing is pickled.

MLflow executes this file when loading the model; ``set_model`` at the bottom is that contract,
the one module in this package that does something on import.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from model.registry.versions import ARTIFACT_KEY


class IntentPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        # MLflow runs this file when it logs the model too: PyTorch (through the predictor) only when it loads one
        from model.artifact.predictor import IntentPredictor

        self.predictor = IntentPredictor.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):
        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        preds = self.predictor.predict(texts)
        columns = {
            "intent": [p.intent for p in preds],
            "confidence": [p.confidence for p in preds],
            "fallback": [p.fallback for p in preds],
        }
        if self.predictor.tags:  # a model with an entity head: each row's entities as a list of dicts
            columns["entities"] = [[e.to_dict() for e in p.entities] for p in preds]
        return pd.DataFrame(columns)


mlflow.models.set_model(IntentPyfunc())
