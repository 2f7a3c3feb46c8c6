"""Run a verified model artifact: texts in, intents, confidences and fallback flags out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from model.artifact import read_json, verify
from model.network import build_from_artifact


@dataclass(frozen=True)
class Prediction:
    intent: str
    confidence: float
    fallback: bool  # below the calibrated threshold: hand off to a human instead of answering


class IntentPredictor:
    """A classifier plus what is needed to use it: tokenizer, intent names, fallback threshold."""

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        threshold: float,
        max_length: int,
        meta: dict | None = None,
        temperature: float = 1.0,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.labels = list(labels)
        self.threshold = float(threshold)
        self.temperature = float(temperature)  # divides the logits: fitted on validation data
        self.max_length = int(max_length)
        self.meta = meta or {}
        self.digest = ""
        self.device = next(model.parameters()).device
        self.model.eval()

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> IntentPredictor:
        """Load an artifact only after its sha256 manifest verifies."""
        folder = Path(folder)
        digest = verify(folder)
        labels = read_json(folder, "labels.json")["labels"]
        meta = read_json(folder, "meta.json")
        model, tokenizer = build_from_artifact(folder, len(labels))
        model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
        predictor = cls(
            model.to(device),
            tokenizer,
            labels,
            meta["fallback_threshold"],
            meta["max_length"],
            meta,
            meta.get("temperature", 1.0),
        )
        predictor.digest = digest
        return predictor

    @torch.inference_mode()
    def probabilities(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Softmax over intents, one row per text; batches are formed by length to avoid padding."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            logits = self.model(enc["input_ids"], enc["attention_mask"])
            out[idx] = torch.softmax(logits.float() / self.temperature, dim=-1).cpu().numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        probs = self.probabilities(texts, batch_size)
        best = probs.argmax(axis=1)
        return [
            Prediction(self.labels[j], float(probs[i, j]), bool(probs[i, j] < self.threshold))
            for i, j in enumerate(best)
        ]
