"""The classifier exported as an ONNX graph at packaging time, and checked against PyTorch.

The graph is the whole ``IntentClassifier`` (encoder, mean pooling, cosine head, and the entity
head when there is one: a second output ``tag_logits``), fp32, with dynamic batch and sequence
axes. Export is traced with an example batch that has padding, so the attention mask's path is what
gets recorded, and it is checked before the artifact is sealed: ONNX Runtime and PyTorch must give
the same probabilities (within ``tolerance``) on real texts, in one padded batch and one at a time:
intent probabilities, and tag probabilities on every real token. The temperature and fallback
threshold were fitted on PyTorch's probabilities; that check is what lets them carry over unchanged.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from model.artifact.onnx_runtime import INPUTS, ONNX_FILE, OPSET, OUTPUTS, OnnxLogits
from model.artifact.predictor import softmax
from model.core.errors import FlywheelError


def export(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int, path: Path) -> None:
    """Write ``model`` (an IntentClassifier) to ``path`` as ONNX, traced on a padded batch of ``texts``."""
    model = copy.deepcopy(model).cpu().eval()  # eval: dropout off in the traced graph
    example = tokenizer(
        texts[:8], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )  # padded to max_length: the mask is exercised whatever the texts' lengths
    dynamic = {"batch": 0, "sequence": 1}
    outputs = OUTPUTS if model.tagger is not None else OUTPUTS[:1]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes; the check below decides
        torch.onnx.export(
            model,
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=list(INPUTS),
            output_names=list(outputs),
            dynamic_axes={
                "input_ids": {v: k for k, v in dynamic.items()},
                "attention_mask": {v: k for k, v in dynamic.items()},
                "logits": {0: "batch"},
                **({"tag_logits": {v: k for k, v in dynamic.items()}} if len(outputs) > 1 else {}),
            },
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT's masks
        )


def compare(
    model: torch.nn.Module, tokenizer, texts: list[str], max_length: int, temperature: float, path: Path
) -> dict:
    """Largest differences between ONNX Runtime and PyTorch: on one padded batch, and text by text."""
    model = copy.deepcopy(model).cpu().eval()
    runner = OnnxLogits(path)
    batches = [texts[:64]] + [[t] for t in texts[:8]]  # padded batch, then no padding at all
    logit_diff = prob_diff = 0.0
    agree = total = 0
    for batch in batches:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        ort_out = runner.outputs(enc["input_ids"], enc["attention_mask"])
        with torch.inference_mode():
            torch_out = model(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
        torch_out = tuple(o.numpy() for o in (torch_out if isinstance(torch_out, tuple) else (torch_out,)))
        if len(ort_out) != len(torch_out):
            raise FlywheelError(f"ONNX graph has {len(ort_out)} outputs, the PyTorch model {len(torch_out)}")
        ort_logits, torch_logits = ort_out[0], torch_out[0]
        logit_diff = max(logit_diff, float(np.abs(ort_logits - torch_logits).max()))
        probs = softmax(ort_logits / temperature) - softmax(torch_logits / temperature)
        prob_diff = max(prob_diff, float(np.abs(probs).max()))
        if len(ort_out) > 1:  # tag probabilities, on real tokens only (padding rows are never decoded)
            real = enc["attention_mask"].astype(bool)
            tag_diff = softmax(ort_out[1]) - softmax(torch_out[1])
            prob_diff = max(prob_diff, float(np.abs(tag_diff[real]).max()))
            logit_diff = max(logit_diff, float(np.abs(ort_out[1] - torch_out[1])[real].max()))
        agree += int((ort_logits.argmax(1) == torch_logits.argmax(1)).sum())
        total += len(batch)
    return {"max_abs_logit_diff": logit_diff, "max_abs_probability_diff": prob_diff, "argmax_agreement": agree / total}


def export_checked(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    folder: Path,
    *,
    max_length: int,
    temperature: float,
    tolerance: float,
) -> dict:
    """Export into ``folder`` and check it; raise FlywheelError (and leave no model.onnx) if ORT differs."""
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise FlywheelError("ONNX export check needs at least 2 texts (validation or training examples)")
    path = Path(folder) / ONNX_FILE
    try:
        export(model, tokenizer, texts, max_length, path)
        check = compare(model, tokenizer, texts, max_length, temperature, path)
    except FlywheelError:
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the step that failed
        path.unlink(missing_ok=True)
        raise FlywheelError(
            f"ONNX export failed: {type(exc).__name__}: {exc} (train.export_onnx: false packages without it)"
        ) from exc
    if check["max_abs_probability_diff"] > tolerance:
        path.unlink(missing_ok=True)
        raise FlywheelError(
            f"ONNX export differs from PyTorch: probabilities differ by up to {check['max_abs_probability_diff']:.2e} "
            f"(logits by {check['max_abs_logit_diff']:.2e}), more than train.onnx_tolerance {tolerance:.0e}; "
            "artifact not written"
        )
    return {
        "file": ONNX_FILE,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "checked_texts": min(len(texts), 64),
        **{k: round(v, 8) for k, v in check.items()},
    }
