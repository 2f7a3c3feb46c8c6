"""Fine-tune the intent classifier: seeded, length-bucketed batches, AdamW, warm-up then linear decay.

With entity spans in the data, the entity head trains in the same steps: the loss is the intent
loss plus ``entity_loss_weight`` times the token-tag loss, from one encoder pass (joint training, as
Joint BERT does). Every example of such data counts as annotated: a text without spans teaches
that it has no entities. On CUDA it runs under bf16 (or fp16 with loss scaling) autocast; on CPU it
is bit-for-bit repeatable for a given seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from model.artifact.entity_tags import IGNORE, encode, tag_names
from model.artifact.network import IntentClassifier, load_pretrained
from model.artifact.predictor import IntentPredictor, pad_batch
from model.core.config import TrainConfig

HEAD_SCALE = 20.0  # cosine logits in [-20, 20]: sharp enough for softmax, bounded enough for calibration


@dataclass
class FitResult:
    model: IntentClassifier
    tokenizer: object
    labels: list[str]
    device: str
    history: list[dict] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # the entity head's BIO tags; empty: no entity head


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _batches(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then sort within chunks of 50 batches by length: little padding, still random."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort([lengths[i] for i in part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, mask = pad_batch(ids, pad_id)
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)


def _collate_tags(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out).to(device)


@torch.no_grad()
def _init_head_at_centroids(model: IntentClassifier, ids, targets, num_labels, pad_id, device, batch_size):
    """Start the head as a nearest-centroid classifier on the pretrained embeddings."""
    model.eval()
    sums = torch.zeros(num_labels, model.head.in_features, device=device)
    order = np.argsort([len(x) for x in ids])
    for start in tqdm(range(0, len(order), batch_size * 2), desc="centroids", leave=False):
        idx = order[start : start + batch_size * 2]
        input_ids, mask = _collate([ids[i] for i in idx], pad_id, device)
        sums.index_add_(0, torch.as_tensor(targets[idx], device=device), model.embed(input_ids, mask).float())
    model.head.weight.copy_(nn.functional.normalize(sums, dim=-1).to(model.head.weight.dtype))


@torch.no_grad()
def _init_tagger_at_centroids(model: IntentClassifier, ids, token_tags, pad_id, device, batch_size):
    """Start the entity head as a nearest-centroid classifier of the pretrained token vectors, as the
    intent head starts from the intents' centroids: a regular format (order numbers, amounts) is
    found from step 0, which a small dataset's few dozen steps could not teach a random head.

    Logits are minus the squared distance to each tag's centroid, scaled by the mean squared distance
    of the labelled tokens to their own: ``-|h - c|² / d = (2 c·h - |c|²) / d`` up to ``|h|²``, which
    is the same for every tag. A tag with no token (an ``I-`` of one-word entities) is never chosen."""
    model.eval()
    tagger = model.tagger
    sums = torch.zeros(tagger.out_features, tagger.in_features, device=device)
    counts = torch.zeros(tagger.out_features, device=device)
    batches = []
    for start in range(0, len(ids), batch_size * 2):
        idx = list(range(start, min(start + batch_size * 2, len(ids))))
        input_ids, mask = _collate([ids[i] for i in idx], pad_id, device)
        gold = _collate_tags([token_tags[i] for i in idx], device)
        hidden = model._tokens(input_ids, mask).float()
        keep = gold != IGNORE
        sums.index_add_(0, gold[keep], hidden[keep])
        counts += torch.bincount(gold[keep], minlength=tagger.out_features).float()
        batches.append((hidden[keep], gold[keep]))
    centroids = sums / counts.clamp(min=1.0).unsqueeze(1)
    spread = torch.cat([((h - centroids[g]) ** 2).sum(1) for h, g in batches]).mean().clamp(min=1e-6)
    tagger.weight.copy_((2 * centroids / spread).to(tagger.weight.dtype))
    bias = -(centroids**2).sum(1) / spread
    tagger.bias.copy_(torch.where(counts > 0, bias, torch.full_like(bias, -1e4)).to(tagger.bias.dtype))


def _token_tags(encoded, entities: list[list[dict]], tags: list[str]) -> list[list[int]]:
    index = {name: i for i, name in enumerate(tags)}
    offsets = encoded["offset_mapping"]
    return [encode(offsets[i], encoded.word_ids(i), spans, index) for i, spans in enumerate(entities)]


def _optimizer(model: IntentClassifier, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the encoder's weights only; the heads learn at their own, higher rate."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    encoder_params = [(n, p) for n, p in model.encoder.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in encoder_params if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in encoder_params if n.endswith(no_decay)], "weight_decay": 0.0},
            {"params": model.head.parameters(), "lr": cfg.head_learning_rate, "weight_decay": 0.0},
            *(
                [{"params": model.tagger.parameters(), "lr": cfg.head_learning_rate, "weight_decay": 0.0}]
                if model.tagger is not None
                else []
            ),
        ],
        lr=cfg.learning_rate,
    )


def fit(
    texts: list[str],
    intents: list[str],
    cfg: TrainConfig,
    val_texts=(),
    val_intents=(),
    entities: list[list[dict]] | None = None,
) -> FitResult:
    """Train on (text, intent) pairs, and their entity spans when given (one list of
    ``{start, end, type}`` per text); report validation accuracy after each epoch when given."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    labels = sorted(set(intents))
    label_index = {name: i for i, name in enumerate(labels)}
    tags = tag_names([s["type"] for spans in entities or [] for s in spans])
    tags = tags if len(tags) > 1 else []  # no spans at all: an intent-only model
    model, tokenizer = load_pretrained(cfg.base_model, len(labels), HEAD_SCALE, len(tags))
    model.to(device)
    encoded = tokenizer(list(texts), truncation=True, max_length=cfg.max_length, return_offsets_mapping=bool(tags))
    ids = encoded["input_ids"]
    token_tags = _token_tags(encoded, entities, tags) if tags else []
    targets = np.array([label_index[i] for i in intents])
    pad_id = tokenizer.pad_token_id or 0

    _init_head_at_centroids(model, ids, targets, len(labels), pad_id, device, cfg.batch_size)
    if tags:
        _init_tagger_at_centroids(model, ids, token_tags, pad_id, device, cfg.batch_size)
    if cfg.freeze_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)

    optimizer = _optimizer(model, cfg)
    steps_per_epoch = -(-len(ids) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    tag_loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)

    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    rng = np.random.default_rng(cfg.seed)
    lengths = [len(x) for x in ids]
    history: list[dict] = []
    step = 0
    result = FitResult(model, tokenizer, labels, str(device), history, tags)
    for epoch in range(cfg.epochs):
        model.train()
        running = 0.0
        batches = _batches(lengths, cfg.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for n, idx in enumerate(bar, start=1):
            input_ids, mask = _collate([ids[i] for i in idx], pad_id, device)
            y = torch.as_tensor(targets[idx], device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if tags:
                    intent_logits, tag_logits = model(input_ids, mask)
                    gold = _collate_tags([token_tags[i] for i in idx], device)
                    tag_loss = tag_loss_fn(tag_logits.float().flatten(0, 1), gold.flatten())
                    loss = loss_fn(intent_logits.float(), y) + cfg.entity_loss_weight * tag_loss
                else:
                    loss = loss_fn(model(input_ids, mask).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += loss.item()
            step += 1
            bar.set_postfix(loss=f"{running / n:.3f}")
            if step >= total:
                break
        record = {"epoch": epoch + 1, "train_loss": running / max(n, 1), "steps": step}
        if len(val_texts):
            record["val_accuracy"] = _accuracy(result, list(val_texts), list(val_intents), cfg.max_length)
        history.append(record)
        tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if step >= total:
            break
    model.eval()
    return result


def _accuracy(result: FitResult, texts: list[str], intents: list[str], max_length: int) -> float:
    known = [i for i, name in enumerate(intents) if name in result.labels]
    if not known:
        return float("nan")
    predictor = IntentPredictor(result.model, result.tokenizer, result.labels, 0.0, max_length, tags=result.tags)
    predicted = predictor.predict([texts[i] for i in known])
    return float(np.mean([p.intent == intents[i] for p, i in zip(predicted, known)]))
