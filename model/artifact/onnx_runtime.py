"""ONNX Runtime over the artifact's ``model.onnx`` or its int8 copy: the classifier's logits from token ids and mask.

The graph is the whole ``IntentClassifier`` (encoder, mean pooling, cosine head, and the entity
head when the model has one), fp32, with dynamic batch and sequence axes; its outputs are
``logits`` (batch x intents) and, with entities, ``tag_logits`` (batch x tokens x tags).
``model.train.onnx_export`` writes it and checks it against PyTorch before the artifact is sealed;
``model.train.int8`` writes ``model.int8.onnx`` beside it (int8 weights) when it passes the parity check.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.core.errors import FlywheelError

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# the runtimes an artifact can be served with, and the graph each runs ("torch": model.safetensors)
ONNX_RUNTIMES = {"onnx-int8": INT8_FILE, "onnx-fp32": ONNX_FILE}
OPSET = 17
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("logits", "tag_logits")  # the second only for a model with an entity head


def cpu_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OnnxLogits:
    """An ONNX Runtime session computing the classifier's logits from token ids and attention mask.

    Each run is single-threaded and ``threads`` runs (default: one per core) go side by side, one per
    chunk of a batch: chat messages are short, and splitting their small matrix products across cores
    cost more CPU per text (measured on MiniLM, 2 cores: 3.9-4.4 ms against 3.8 ms per text).
    """

    def __init__(self, path: Path, threads: int = 0):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # a single-threaded run spins nowhere; stated so a later change of thread count does not make
        # idle pool threads spin and take the CPU from the server's event loop
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise FlywheelError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUTS):
            raise FlywheelError(f"{path}: graph inputs are {names}, expected {list(INPUTS)}")
        # ONNX Runtime sessions may run concurrently; it releases the GIL while it computes
        self.threads = threads or cpu_cores()
        self.runtime = "onnx-int8" if Path(path).name == INT8_FILE else "onnx-fp32"
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="flywheel-onnx")

    def outputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """Intent logits, then tag logits when the graph has an entity head."""
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return tuple(out.astype(np.float32) for out in self.session.run(None, feed))

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The intent logits alone."""
        return self.outputs(input_ids, attention_mask)[0]

    def run_all(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
        """The outputs of each (input_ids, attention_mask) pair, in order; pairs run in parallel."""
        if len(batches) == 1:
            return [self.outputs(*batches[0])]
        return list(self._pool.map(lambda pair: self.outputs(*pair), batches))
