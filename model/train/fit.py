"""Fine-tune the intent classifier: seeded, length-bucketed batches, AdamW, warm-up then linear decay.

With entity spans in the data, the entity head trains in the same steps: the loss is the intent
loss plus ``entity_loss_weight`` times the token-tag loss, from one encoder pass (joint training, as
Joint BERT does). Every example of such data counts as annotated: a text without spans teaches
that it has no entities. On CUDA it runs under bf16 (or fp16 with loss scaling) autocast; on CPU it
is bit-for-bit repeatable for a given seed, a run resumed from a checkpoint (``model.train.checkpoint``)
included.

As one of N workers under torchrun (``model.train.distributed``) a rank takes every N-th example of
each batch; its losses are sums divided by the whole batch's counts, so the ranks' gradients, which
DDP's all-reduce averages (times N: their sum), are the one-process run's gradient of the batch.
``batch_size`` is that whole batch: N workers take the same steps as one process, at the same
learning rates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from model.artifact.entity_tags import IGNORE, encode, tag_names
from model.artifact.network import IntentClassifier, load_pretrained, pick_device
from model.artifact.predictor import IntentPredictor, pad_batch
from model.core.config import TrainConfig
from model.core.progress import bar, say
from model.train import checkpoint
from model.train.distributed import World

HEAD_SCALE = 20.0  # cosine logits in [-20, 20]: sharp enough for softmax, bounded enough for calibration


@dataclass
class FitResult:
    model: IntentClassifier
    tokenizer: object
    labels: list[str]
    device: str
    history: list[dict] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # the entity head's BIO tags; empty: no entity head
    resumed_from_step: int | None = None  # the checkpoint's step this run went on from; None: trained from scratch
    precision: str = "fp32"  # the forward passes' autocast dtype: bf16 or fp16 on CUDA


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
def _init_head_at_centroids(model: IntentClassifier, ids, targets, *, num_labels, pad_id, device, batch_size):
    """Start the head as a nearest-centroid classifier on the pretrained embeddings."""
    model.eval()
    sums = torch.zeros(num_labels, model.head.in_features, device=device)
    order = np.argsort([len(x) for x in ids])
    for start in bar(range(0, len(order), batch_size * 2), desc="centroids", leave=False):
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


@dataclass
class _Examples:
    """The training texts as the loop reads them."""

    ids: list[list[int]]  # token ids per text
    targets: np.ndarray  # intent index per text
    token_tags: list[list[int]]  # BIO tag index per token (IGNORE where none); empty: no entity head
    tagged_tokens: np.ndarray  # per text, the tokens the tag loss counts
    pad_id: int


def fit(
    texts: list[str],
    intents: list[str],
    cfg: TrainConfig,
    val_texts=(),
    val_intents=(),
    entities: list[list[dict]] | None = None,
    *,
    world: World | None = None,
    checkpoints: Path | None = None,
    run: dict | None = None,
) -> FitResult:
    """Train on (text, intent) pairs, and their entity spans when given (one list of
    ``{start, end, type}`` per text); report validation accuracy after each epoch when given.

    ``world``: this process's place under torchrun (``model.train.distributed``; None: one process).
    ``checkpoints``: the run's checkpoint folder: resume from its latest checkpoint, and write one every
    ``cfg.checkpoint_every`` steps (None: neither). ``run`` is saved in them (``Progress.run``)."""
    world = world or World(device=pick_device(cfg.device))
    seed_everything(cfg.seed)
    device = world.device
    labels = sorted(set(intents))
    tags = tag_names([s["type"] for spans in entities or [] for s in spans])
    tags = tags if len(tags) > 1 else []  # no spans at all: an intent-only model
    model, tokenizer = load_pretrained(cfg.base_model, len(labels), HEAD_SCALE, len(tags))
    model.to(device)
    data = _encode(tokenizer, texts, intents, labels=labels, entities=entities, tags=tags, max_length=cfg.max_length)

    resume = checkpoint.latest(checkpoints)
    if resume is None:  # a resumed run's weights come from its checkpoint
        _init_heads(model, data, len(labels), device, cfg.batch_size)
    if cfg.freeze_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)

    optimizer = _optimizer(model, cfg)
    steps_per_epoch = -(-len(data.ids) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    amp_dtype = _autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    rng = np.random.default_rng(cfg.seed)
    if world.distributed:  # each rank its own dropout masks
        torch.manual_seed(cfg.seed + world.rank)
    progress = checkpoint.Progress(run=dict(run or {}))  # with `saved`, what a checkpoint holds
    saved = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": rng}
    if resume is not None:
        progress = checkpoint.restore(resume, world, **saved, seed=cfg.seed)
        if world.is_main:
            say(f"resuming from {resume} (step {progress.step} of {total})")
    net = world.wrap(model)  # DDP under torchrun: backward averages the ranks' gradients
    lengths = [len(x) for x in data.ids]
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    resumed_from = progress.step if resume is not None else None
    result = FitResult(model, tokenizer, labels, str(device), progress.history, tags, resumed_from, precision)
    while progress.epoch < cfg.epochs and progress.step < total:
        if progress.batches is None:
            progress.batches = [b.tolist() for b in _batches(lengths, cfg.batch_size, rng)]
        net.train()
        epoch_bar = bar(
            total=len(progress.batches),
            initial=progress.batches_done,
            desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
            leave=False,
            hidden=not world.is_main,
        )
        for batch in progress.batches[progress.batches_done :]:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = _batch_loss(net, data, np.asarray(batch), world, cfg)
            _step(loss * world.size, model, optimizer, scheduler, scaler)  # DDP averages the ranks': their sum
            progress.running_loss += loss.item()
            progress.batches_done += 1
            progress.step += 1
            epoch_bar.update()
            if progress.step >= total:
                break
            if checkpoints is not None and cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0:
                checkpoint.save(checkpoints, world, progress, **saved)
        epoch_bar.close()
        _end_epoch(progress, world, result, val_texts, val_intents, cfg.max_length)
        progress = progress.next_epoch()
    model.eval()
    return result


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a GPU that has it, else fp16 (with loss scaling); None (fp32) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _init_heads(model: IntentClassifier, data: _Examples, num_labels: int, device, batch_size: int) -> None:
    _init_head_at_centroids(
        model, data.ids, data.targets, num_labels=num_labels, pad_id=data.pad_id, device=device, batch_size=batch_size
    )
    if data.token_tags:
        _init_tagger_at_centroids(model, data.ids, data.token_tags, data.pad_id, device, batch_size)


def _step(loss: torch.Tensor, model: nn.Module, optimizer, scheduler, scaler: torch.amp.GradScaler) -> None:
    """One optimiser step: backward (scaled for fp16), gradients clipped to norm 1, the LR schedule on."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def _encode(tokenizer, texts, intents, *, labels, entities, tags, max_length) -> _Examples:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=bool(tags))
    token_tags = _token_tags(encoded, entities, tags) if tags else []
    label_index = {name: i for i, name in enumerate(labels)}
    return _Examples(
        ids=encoded["input_ids"],
        targets=np.array([label_index[i] for i in intents]),
        token_tags=token_tags,
        tagged_tokens=np.array([sum(t != IGNORE for t in row) for row in token_tags], dtype=np.int64),
        pad_id=tokenizer.pad_token_id or 0,
    )


def _batch_loss(net: nn.Module, data: _Examples, batch: np.ndarray, world: World, cfg: TrainConfig) -> torch.Tensor:
    """This rank's part of the batch's loss: sums over its share of the examples (and tagged tokens),
    divided by the whole batch's counts, so the ranks' parts add up to the one-process run's mean
    whatever each rank's share; a rank with nothing to do contributes a loss of weight 0."""
    mine, weight = world.shard(batch)
    device = world.device
    input_ids, mask = _collate([data.ids[i] for i in mine], data.pad_id, device)
    y = torch.as_tensor(data.targets[mine], device=device)
    smoothing = cfg.label_smoothing
    if not data.token_tags:
        loss = nn.functional.cross_entropy(net(input_ids, mask).float(), y, label_smoothing=smoothing, reduction="sum")
        return loss / len(batch) * weight
    intent_logits, tag_logits = net(input_ids, mask)
    gold = _collate_tags([data.token_tags[i] for i in mine], device)
    tag_loss = nn.functional.cross_entropy(
        tag_logits.float().flatten(0, 1), gold.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    intent_loss = nn.functional.cross_entropy(intent_logits.float(), y, label_smoothing=smoothing, reduction="sum")
    tagged = max(int(data.tagged_tokens[batch].sum()), 1)
    return (intent_loss / len(batch) + cfg.entity_loss_weight * tag_loss / tagged) * weight


def _end_epoch(progress: checkpoint.Progress, world: World, result: FitResult, val_texts, val_intents, max_length):
    """The epoch's record (its mean loss over the ranks; validation accuracy, on rank 0) into the history."""
    record = {
        "epoch": progress.epoch + 1,
        "train_loss": world.sum([progress.running_loss])[0] / max(progress.batches_done, 1),
        "steps": progress.step,
    }
    if len(val_texts) and world.is_main:
        record["val_accuracy"] = _accuracy(result, list(val_texts), list(val_intents), max_length)
    progress.history.append(record)
    if world.is_main:
        line = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        say(line)  # one line per epoch, on a terminal or not


def _accuracy(result: FitResult, texts: list[str], intents: list[str], max_length: int) -> float:
    known = [i for i, name in enumerate(intents) if name in result.labels]
    if not known:
        return float("nan")
    predictor = IntentPredictor(
        result.model, result.tokenizer, result.labels, threshold=0.0, max_length=max_length, tags=result.tags
    )
    predicted = predictor.predict([texts[i] for i in known])
    return float(np.mean([p.intent == intents[i] for p, i in zip(predicted, known)]))
