"""Run a verified model artifact: texts in, intents, confidences, fallback flags and entities out.

Two runtimes compute the same logits: ONNX Runtime on the artifact's ``model.onnx`` (checked
against PyTorch when the artifact was packaged; faster on CPU) and PyTorch on ``model.safetensors``
(any device; artifacts without ``model.onnx``; and the model being trained).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from model.artifact.entity_tags import Entity, decode
from model.artifact.manifest import read_json, verify
from model.artifact.network import build_from_artifact
from model.artifact.onnx_runtime import ONNX_FILE, OnnxLogits
from model.core.errors import FlywheelError

RUNTIMES = ("onnx", "torch")
# Texts per forward pass; texts are sorted by token count first, so a pass pads little. ONNX Runtime
# has little overhead per call, so small chunks win (MiniLM, 32 chat messages: 3.8 ms CPU per text
# in chunks of 8, 5.4 ms in one pass); PyTorch's per-call overhead wants bigger ones.
FORWARD_BATCH = {"onnx": 8, "torch": 64}

__all__ = ["Entity", "IntentPredictor", "Prediction", "pad_batch", "softmax"]


@dataclass(frozen=True)
class Prediction:
    intent: str
    confidence: float
    fallback: bool  # unsure or out of scope (the calibrated thresholds): hand off to a human instead of answering
    entities: tuple[Entity, ...] = ()  # empty for a model trained without entity data


class IntentPredictor:
    """A classifier plus what is needed to use it: tokenizer, intent names, fallback threshold, and
    the entity head's tag names (``tags``, empty for an intent-only model).

    ``model`` is the PyTorch module, or None when ``onnx`` (an ONNX Runtime session) computes the logits.
    """

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        *,
        threshold: float,
        max_length: int,
        meta: dict | None = None,
        temperature: float = 1.0,
        onnx: OnnxLogits | None = None,
        tags: list[str] = (),
    ):
        if (model is None) == (onnx is None):
            raise ValueError("give exactly one of a PyTorch model and an ONNX Runtime session")
        self.model, self.onnx, self.tokenizer = model, onnx, tokenizer
        self.runtime = "onnx" if onnx is not None else "torch"
        self.labels = list(labels)
        self.tags = list(tags)
        self.threshold = float(threshold)
        # out-of-scope hand-off: below this top intent logit (scale x the best cosine to an intent), the
        # message is like no intent the model knows, however the softmax spreads; None: no such check
        scope = (meta or {}).get("scope_threshold")
        self.scope_threshold = None if scope is None else float(scope)
        self.temperature = float(temperature)  # divides the logits: fitted on validation data
        self.max_length = int(max_length)
        self.meta = meta or {}
        self.digest = ""
        if model is not None:
            self.device = next(model.parameters()).device
            self.model.eval()
        else:
            self.device = torch.device("cpu")

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", runtime: str = "onnx") -> IntentPredictor:
        """Load an artifact only after its sha256 manifest verifies.

        ``runtime="onnx"`` runs ``model.onnx`` with ONNX Runtime when the artifact has one and the
        device is the CPU, else PyTorch; ``"torch"`` always runs PyTorch. ``meta["runtime"]`` says which.
        """
        if runtime not in RUNTIMES:
            raise FlywheelError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
        folder = Path(folder)
        digest = verify(folder)
        label_map = read_json(folder, "labels.json")
        labels, tags = label_map["labels"], label_map.get("entity_tags", [])
        meta = read_json(folder, "meta.json")
        model = onnx = None
        if runtime == "onnx" and device == "cpu" and (folder / ONNX_FILE).is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            onnx = OnnxLogits(folder / ONNX_FILE)
        else:
            model, tokenizer = build_from_artifact(folder, len(labels), len(tags))
            model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
            model = model.to(device)
        predictor = cls(
            model,
            tokenizer,
            labels,
            threshold=meta["fallback_threshold"],
            max_length=meta["max_length"],
            meta=meta,
            temperature=meta.get("temperature", 1.0),
            onnx=onnx,
            tags=tags,
        )
        predictor.meta = {**meta, "runtime": predictor.runtime}
        predictor.digest = digest
        return predictor

    def probabilities(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Softmax over intents, one row per text; passes group texts of similar token count to pad little."""
        return self._run(texts, batch_size)[0]

    def top_logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Each text's highest intent logit before temperature: the score the scope threshold reads."""
        return self._run(texts, batch_size)[3]

    def _run(self, texts: list[str], batch_size: int | None = None):
        """Intent probabilities; with an entity head also, per text, its tokens' (offsets, word ids) and
        tag probabilities; and each text's top intent logit."""
        batch_size = batch_size or self._chunk_size(len(texts))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        top = np.zeros(len(texts), dtype=np.float32)
        token_probs: list[np.ndarray | None] = [None] * len(texts)
        if not len(texts):
            return out, [], token_probs, top
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, return_offsets_mapping=bool(self.tags)
        )
        ids = encoded["input_ids"]
        words = [(encoded["offset_mapping"][i], encoded.word_ids(i)) for i in range(len(ids))] if self.tags else []
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        padded = [pad_batch([ids[i] for i in idx], self.tokenizer.pad_token_id or 0) for idx in chunks]
        for idx, outputs in zip(chunks, self._logits(padded)):
            out[idx] = softmax(outputs[0] / self.temperature)
            top[idx] = outputs[0].max(axis=-1)
            if self.tags:
                tag_probs = softmax(outputs[1])
                for row, i in enumerate(idx):
                    token_probs[i] = tag_probs[row, : len(ids[i])]
        return out, words, token_probs, top

    def _chunk_size(self, n: int) -> int:
        """Texts per pass for a batch of ``n``: with ONNX Runtime, chunks of at most 8, as many as a
        multiple of the cores and of equal size, so a batch of 8 still uses every core (measured at
        8 clients: 257-271 req/s against 163-165 with one chunk of 8) and no core waits on a longer chunk."""
        if self.onnx is None:
            return FORWARD_BATCH[self.runtime]
        chunks = self.onnx.threads * max(1, math.ceil(n / (self.onnx.threads * FORWARD_BATCH["onnx"])))
        return max(1, math.ceil(n / chunks))

    def _logits(self, batches: list[tuple[np.ndarray, np.ndarray]]):
        """The outputs of each (input_ids, attention_mask) pair, in order: intent logits, then tag
        logits when the model has an entity head."""
        if self.onnx is not None:
            yield from self.onnx.run_all(batches)
            return
        for input_ids, mask in batches:
            with torch.inference_mode():
                ids, mask = torch.from_numpy(input_ids).to(self.device), torch.from_numpy(mask).to(self.device)
                outputs = self.model(ids, mask)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                yield tuple(o.float().cpu().numpy() for o in outputs)

    def predict(self, texts: list[str], batch_size: int | None = None) -> list[Prediction]:
        probs, words, token_probs, top = self._run(texts, batch_size)
        best = probs.argmax(axis=1)
        out_of_scope = top < self.scope_threshold if self.scope_threshold is not None else np.zeros(len(texts), bool)
        return [
            Prediction(
                self.labels[j],
                float(probs[i, j]),
                bool(probs[i, j] < self.threshold or out_of_scope[i]),
                tuple(decode(texts[i], *words[i], token_probs[i], self.tags)) if self.tags else (),
            )
            for i, j in enumerate(best)
        ]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis (shifted by the maximum, so large logits do not overflow)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists into a matrix plus the attention mask (1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
