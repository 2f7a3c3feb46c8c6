"""Model behaviour: training (one process and two under torchrun), checkpoints and resume, the sealed
artifact, the entity head, ONNX Runtime against PyTorch, and the real
MiniLM fine-tuned and checked for what it learned (``slow``)."""
