"""Which runtime the artifact serves, decided once at packaging: the fp32 ONNX export, its int8 copy,
and the parity check between them on the validation split.

``model.onnx`` is exported and checked against PyTorch (``model.train.onnx_export``); then ONNX
Runtime's dynamic quantization writes ``model.int8.onnx`` (int8 weights, activations quantized per
call). The int8 copy serves only if, on the in-scope validation texts, its top intent is fp32's on at least
``train.int8_min_intent_agreement`` of them and its entity span F1 (against the true spans) is at
most ``train.int8_max_entity_f1_drop`` below fp32's. Otherwise the artifact keeps no int8 model,
fp32 serves, and meta.json and the model card give the figures. The temperature and thresholds were
fitted on PyTorch's probabilities and apply unchanged; evaluation and the gate then measure the
served runtime with them, so the accuracy that passes the gate is the one users get.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pandas as pd
from onnxruntime.quantization import QuantType, quantize_dynamic

from model.artifact.onnx_runtime import INT8_FILE, ONNX_FILE, OnnxLogits
from model.artifact.predictor import IntentPredictor
from model.core.config import TrainConfig
from model.evaluate.evaluation import span_keys, true_spans
from model.evaluate.spans import entity_metrics
from model.train.fit import FitResult
from model.train.onnx_export import export_checked

# Quantization settings, chosen by measurement on MiniLM fine-tuned on the sample data for one epoch
# (top-1 agreement with fp32 on the 272 in-scope validation and test texts; CPU time per text in passes
# of 8 on one thread, fp32: 3.4 ms; docs/serving.md has the table):
# per-channel weight scales, one per output column, so a column of small weights keeps its precision
# (per-tensor: 99.25% agreement; per-channel: 99.63%, for 1.73 against 1.67 ms)
PER_CHANNEL = True
# MatMul only: the word embeddings stay fp32 (a Gather: nothing to compute faster, only a smaller file,
# 21 against 56 MiB, for 0.3 points less agreement over all 1175 texts)
OP_TYPES = ["MatMul"]
# Tried in turn until one passes the parity check (none: fp32 serves). First every MatMul: the fastest
# (1.55 ms per text on one thread against fp32's 3.18, Banking77's model, passes of 8), and enough on the
# sample data. Then the feed-forward output projections kept fp32 (their input, the GELU's, has the
# widest range): 2.05 ms, and on Banking77's model 4 of 992 validation texts change their top intent
# instead of 6 (99.60% agreement against 99.40%; docs/serving.md)
KEEP_FP32 = {"every MatMul quantized": None, "feed-forward outputs in fp32": r"/layer\.\d+/output/dense/MatMul$"}


@dataclass(frozen=True)
class Parity:
    """The int8 copy against fp32 on the validation texts: what the check compares and its failures."""

    texts: int
    intent_agreement: float  # share of texts whose top intent is the same
    entity_spans: int  # true spans in the validation texts (0: the entity check does not apply)
    entity_f1_fp32: float | None
    entity_f1_int8: float | None
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServedRuntime:
    """What packaging decided: the predictor on the runtime that will serve, meta.json's sections, the
    model card's line, and the files to seal into the artifact (in the export folder)."""

    predictor: IntentPredictor
    meta: dict
    card: str
    files: list[Path]

    @property
    def runtime(self) -> str:
        return self.meta["served_runtime"]


def torch_only(predictor: IntentPredictor) -> ServedRuntime:
    """An artifact packaged without ONNX (``train.export_onnx: false``): PyTorch serves."""
    return ServedRuntime(predictor, {"served_runtime": "torch"}, "PyTorch (train.export_onnx is off)", [])


def quantize(fp32: Path, int8: Path, keep_fp32: str | None = None) -> dict:
    """Write ``int8``: ``fp32`` with int8 weights (ONNX Runtime dynamic quantization), the MatMul nodes whose
    name matches ``keep_fp32`` left in fp32; returns its settings."""
    names = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in OP_TYPES]
    kept = [n for n in names if keep_fp32 and re.search(keep_fp32, n)]
    quantize_dynamic(
        str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=PER_CHANNEL, op_types_to_quantize=OP_TYPES,
        nodes_to_exclude=kept,
    )  # fmt: skip
    return {"weights": "QInt8", "per_channel": PER_CHANNEL, "op_types": OP_TYPES, "kept_fp32": len(kept)}


def _quantized(predictor: IntentPredictor, fp32: IntentPredictor, check: pd.DataFrame, folder: Path, cfg: TrainConfig):
    """Each quantization of ``KEEP_FP32`` in turn until one passes parity: (settings, its predictor or None,
    its parity). With none passing, the last one's figures and every attempt's failures."""
    failures: list[str] = []
    for name, keep in KEEP_FP32.items():
        try:
            settings = {"name": name, **quantize(folder / ONNX_FILE, folder / INT8_FILE, keep_fp32=keep)}
            int8 = predictor.on_onnx(OnnxLogits(folder / INT8_FILE))
            checked = parity(fp32, int8, check, cfg)
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; fp32 still serves
            settings, int8 = {"name": name}, None
            checked = Parity(len(check), 0.0, 0, None, None, [f"quantization failed: {type(exc).__name__}: {exc}"])
        if int8 is not None and not checked.failures:
            return settings, int8, checked
        failures += [f"{name}: {failure}" for failure in checked.failures]
    return settings, None, dataclasses.replace(checked, failures=failures)


def parity(fp32: IntentPredictor, int8: IntentPredictor, check: pd.DataFrame, cfg: TrainConfig) -> Parity:
    """Compare the two on ``check`` (text, and entities when it has them) against the configured thresholds."""
    texts = check["text"].tolist()
    ours, theirs = int8.predict(texts), fp32.predict(texts)
    agreement = sum(a.intent == b.intent for a, b in zip(ours, theirs)) / len(texts)
    failures = []
    if agreement < cfg.int8_min_intent_agreement:
        failures.append(
            f"top-1 intent agreement with fp32 {agreement:.2%} on {len(texts)} in-scope validation texts, "
            f"below {cfg.int8_min_intent_agreement:.2%}"
        )
    truth = true_spans(check) if int8.tags else []
    scores = [entity_metrics(truth, [span_keys(p) for p in preds]) for preds in (theirs, ours)] if truth else []
    support = scores[0].micro.support if scores and scores[0] is not None else 0
    f1_fp32, f1_int8 = (scores[0].micro.f1, scores[1].micro.f1) if support else (None, None)
    if support and f1_fp32 - f1_int8 > cfg.int8_max_entity_f1_drop:
        failures.append(
            f"entity span F1 {f1_int8:.4f} against fp32's {f1_fp32:.4f} on {support} true spans, "
            f"{(f1_fp32 - f1_int8) * 100:.1f} points lower (at most {cfg.int8_max_entity_f1_drop * 100:.1f})"
        )
    return Parity(len(texts), agreement, support, f1_fp32, f1_int8, failures)


def export_runtimes(
    result: FitResult, predictor: IntentPredictor, check: pd.DataFrame, folder: Path, cfg: TrainConfig
) -> ServedRuntime:
    """Export ``model.onnx`` and ``model.int8.onnx`` into ``folder``, check them, decide which serves.

    ``predictor``: the trained model, calibrated; ``check``: the in-scope validation examples (text, entities).
    An fp32 export that differs from PyTorch stops packaging (FlywheelError); an int8 copy that fails
    parity, or cannot be written, is dropped and fp32 serves.
    """
    check = check[check["text"].str.strip() != ""]
    onnx_check = export_checked(
        result.model,
        result.tokenizer,
        check["text"].tolist(),
        folder,
        max_length=predictor.max_length,
        temperature=predictor.temperature,
        tolerance=cfg.onnx_tolerance,
    )
    fp32 = predictor.on_onnx(OnnxLogits(folder / ONNX_FILE))
    settings, int8, checked = _quantized(predictor, fp32, check, folder, cfg)
    accepted = int8 is not None and not checked.failures
    if not accepted:
        (folder / INT8_FILE).unlink(missing_ok=True)
    figures = {
        "file": INT8_FILE if accepted else None,
        "accepted": accepted,
        "checked_texts": checked.texts,
        "intent_agreement": round(checked.intent_agreement, 6),
        "entity_spans": checked.entity_spans,
        "entity_f1_fp32": checked.entity_f1_fp32,
        "entity_f1_int8": checked.entity_f1_int8,
        "min_intent_agreement": cfg.int8_min_intent_agreement,
        "max_entity_f1_drop": cfg.int8_max_entity_f1_drop,
        "quantization": settings,
        "reason": _reason(checked, accepted, settings["name"]),
    }
    runtime = "onnx-int8" if accepted else "onnx-fp32"
    meta = {"onnx": onnx_check, "int8": figures, "served_runtime": runtime}
    files = [folder / ONNX_FILE] + ([folder / INT8_FILE] if accepted else [])
    return ServedRuntime(int8 if accepted else fp32, meta, figures["reason"], files)


def _reason(checked: Parity, accepted: bool, settings_name: str) -> str:
    """The model card's line on the served runtime: the parity figures, and why int8 was dropped if it was."""
    entities = (
        f"; entity span F1 {checked.entity_f1_int8:.4f} against fp32's {checked.entity_f1_fp32:.4f} on "
        f"{checked.entity_spans} true spans"
        if checked.entity_spans
        else ""
    )
    if accepted:
        return (
            f"ONNX Runtime with int8 weights ({settings_name}): top-1 intent agreement with fp32 "
            f"{checked.intent_agreement:.2%} on {checked.texts} in-scope validation texts{entities}"
        )
    return (
        "ONNX Runtime fp32: every int8 copy failed the parity check (" + "; ".join(checked.failures) + "), so the "
        "artifact keeps no int8 model"
    )
