"""Sentence embeddings for the drift check and the review queue's clusters: the packaged MiniLM (or
any BERT-like encoder), mean pooled and normalised, cached on disk per text, since logged texts
repeat from window to window."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from model.core.files import replacing

_MINILM_WIDTH = 384  # the packaged encoder's embedding size: the shape of an empty result


class Embedder:
    """``embedder(texts)`` -> one unit vector per text, encoding only the texts not cached yet."""

    def __init__(self, encoder: str, cache_dir: Path | None, batch_size: int = 128):
        self.encoder, self.cache_dir, self.batch_size = encoder, cache_dir, batch_size
        self._model = self._tokenizer = None
        self._device = "cpu"
        self._cache: dict | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        keys = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts]
        cache = self._read_cache()
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
        if missing:
            vectors = self._encode([t for _, t in missing])
            cache.update({k: v for (k, _), v in zip(missing, vectors)})
            self._write_cache(cache)
        return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, _MINILM_WIDTH), dtype=np.float32)

    @property
    def device(self) -> str:
        """Where texts are encoded once the encoder is loaded: the GPU when present, as training picks it."""
        return str(self._device)

    def _load(self):
        self._tokenizer, self._model, self._device = _loaded(self.encoder)

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch  # see _load

        if self._model is None:
            self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[i : i + self.batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt"
                ).to(self._device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, _MINILM_WIDTH), dtype=np.float32)

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.sha256(self.encoder.encode()).hexdigest()[:12]}.npz"

    def _read_cache(self) -> dict:
        if self._cache is None:
            self._cache = {}
            path = self._cache_file()
            if path and path.exists():
                data = np.load(path)
                self._cache = dict(zip(data["keys"].tolist(), data["vectors"]))
        return self._cache

    def _write_cache(self, cache: dict) -> None:
        path = self._cache_file()
        if path is None:
            return
        with replacing(path, suffix=".npz") as tmp:
            np.savez(tmp, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))


@functools.cache
def _loaded(encoder: str):
    """The encoder's tokenizer, network and device, loaded once per process: the drift check and
    prepare's review queue both embed, and a loaded encoder is the same whichever cache it feeds."""
    # torch and transformers take seconds to import: texts already in the cache (a re-run, the
    # benchmark's windows) and the drift verdict itself need neither.
    from transformers import AutoModel, AutoTokenizer

    from model.artifact.network import pick_device, resolve_base_model  # imports torch too

    path = resolve_base_model(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    device = pick_device("auto")  # the GPU when present, as training picks it
    return tokenizer, AutoModel.from_pretrained(path).eval().to(device), device
