"""Write a trained classifier as a sealed artifact folder (see model/artifact/manifest.py for the layout)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from model.artifact.entity_tags import entity_types
from model.artifact.manifest import write_manifest
from model.core.errors import FlywheelError
from model.core.files import replacing
from model.train.fit import FitResult
from model.train.onnx_export import export_checked

MODEL_CARD = """# Intent classifier `{name}`

Fine-tuned from `{base_model}` on dataset `{dataset_digest}` at git `{git_sha}`.

- Intents ({n_labels}): {labels}
{entity_line}- Fallback threshold: {threshold:.4f}: below this confidence the bot hands off to a human
  (picked on validation data so answered messages are right at least {precision:.0%} of the time).
{scope_line}
## Intended use
Routing customer-support chat messages to an intent, or to a human when unsure. Not for decisions
about people; not for languages or domains absent from the training data.

## Metrics (held-out test split)
{metrics}
"""


def write_artifact(
    result: FitResult,
    target: Path,
    *,
    threshold: float,
    meta: dict,
    metrics_markdown: str,
    check_texts: list[str] = (),
) -> str:
    """Save weights, tokenizer, labels, meta and model card; seal with a manifest. Returns the digest.

    With ``train.export_onnx`` in ``meta["config"]``, also ``model.onnx``, exported from these weights and
    checked against PyTorch on ``check_texts`` first: an export that differs stops the artifact.
    """
    train_cfg = meta["config"]["train"]
    if target.exists():
        raise FlywheelError(f"{target}: already exists; refusing to overwrite an artifact")
    with replacing(target) as staging:  # a crash leaves no artifact or a whole one, never half of one
        staging.mkdir()
        if train_cfg.get("export_onnx", False):
            meta = {
                **meta,
                "onnx": export_checked(
                    result.model,
                    result.tokenizer,
                    list(check_texts),
                    staging,
                    max_length=meta["max_length"],
                    temperature=meta.get("temperature", 1.0),
                    tolerance=train_cfg["onnx_tolerance"],
                ),
            }
        state = {k: v.detach().contiguous().cpu() for k, v in result.model.state_dict().items()}
        save_file(state, staging / "model.safetensors")
        result.model.encoder.config.save_pretrained(staging)
        result.tokenizer.save_pretrained(staging)
        label_map = {"labels": result.labels, **({"entity_tags": result.tags} if result.tags else {})}
        (staging / "labels.json").write_text(json.dumps(label_map, indent=2) + "\n")
        meta = {**meta, "fallback_threshold": threshold}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (staging / "MODEL_CARD.md").write_text(
            MODEL_CARD.format(
                name=target.name,
                base_model=train_cfg["base_model"],
                dataset_digest=meta["dataset_digest"][:12],
                git_sha=meta["git_sha"][:12],
                n_labels=len(result.labels),
                labels=", ".join(result.labels),
                entity_line=f"- Entity types: {', '.join(entity_types(result.tags))}\n" if result.tags else "",
                threshold=threshold,
                precision=train_cfg["fallback_precision"],
                scope_line=_scope_line(meta, train_cfg),
                metrics=metrics_markdown,
            )
        )
        digest = write_manifest(staging)
    return digest


def _scope_line(meta: dict, train_cfg: dict) -> str:
    """The model card's out-of-scope hand-off line; none for an artifact without a scope threshold."""
    if meta.get("scope_threshold") is None:
        return ""
    return (
        f"- Out-of-scope hand-off: below a top intent logit of {meta['scope_threshold']:.3f} the message is like\n"
        f"  no known intent (picked to cost at most {train_cfg['handoff_in_scope_cost']:.0%} of in-scope answers).\n"
    )
