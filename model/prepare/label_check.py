"""Label mistakes caught before training: cross-validated confident learning over this run's new labels.

People get a few percent of labels wrong, and a wrong label teaches the model the wrong answer. Every
labelled in-scope row (seed, human and auto) is embedded with the sentence encoder the drift check
uses (``data_checks.embeddings``, cached on disk beside its vectors), and a logistic regression over
those vectors gives each row *out-of-sample* predicted probabilities: K-fold ``cross_val_predict``,
seeded, so each row is scored by a model that never saw it. cleanlab's ``find_label_issues``
(confident learning, Northcutt et al., JAIR 2021) estimates from those probabilities how many labels
are wrong (the confident joint: per given intent, the rows the classifier confidently puts in
another intent, calibrated to the class sizes) and, with the default ``low_self_confidence``, flags
that many, those whose given label has the lowest out-of-sample probability first. A reviewer's
slips are scattered thinly over thousands of pairs of intents: on Banking77 with 5% planted
mistakes, cleanlab's per-pair pruning (``prune_by_noise_rate``, its default) caught about 70% of
them, ranking all rows against the one estimated total 93 to 100%, flagging 2% of the right labels
(docs/benchmarks.md says how this was measured).

Only this run's new labels may be flagged: the labels file's rows and the auto-labels. The seed set
and earlier runs' rows are the reference the classifier learns from, not rechecked. A label that
came back from the recheck section of the review queue (``model.prepare.recheck``: a second look)
is confirmed: it trains the classifier and is never flagged. Out-of-scope rows take no part: "none
of the intents" is no region of embedding space a linear classifier can learn, and its labels are
checked where the fallback threshold is calibrated. An intent with fewer than
``label_check_min_per_intent`` labelled rows (never fewer than the folds) takes no part either: K
folds need K rows of it, and a handful gives no reliable probabilities; its rows are kept unchecked
and the datasheet lists it.

A flagged row is left out of the prepared set (training, validation and test) until confirmed, and
goes to the recheck section with the classifier's suggestion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from model.core.config import PrepareConfig
from model.core.errors import FlywheelError
from model.prepare.cleaning import exact_key
from model.prepare.labelling import Labelled

SEED = 0  # the folds are drawn the same way every run: the same data gets the same flags


@dataclass
class LabelCheck:
    kept: pd.DataFrame  # the examples to balance and split: the flagged rows left out
    flagged: pd.DataFrame  # the flagged rows, with ``suggested_intent`` and ``given_probability``
    checked: dict[str, int] = field(default_factory=dict)  # source -> new labels checked
    confirmed: int = 0  # second looks trained on without a check
    unchecked_intents: dict[str, int] = field(default_factory=dict)  # intent -> labelled rows, too few to check
    skipped: str | None = None  # why the check did not run at all (None: it ran, or it is off)

    def summary(self, cfg: PrepareConfig) -> dict:
        """The datasheet's ``label_check`` section (and the step result's)."""
        by_source = self.flagged["source"].value_counts() if len(self.flagged) else pd.Series(dtype=int)
        return {
            "enabled": cfg.label_check,
            "method": cfg.label_check_method,
            "folds": cfg.label_check_folds,
            "skipped": self.skipped,
            "checked": self.checked,
            "flagged": {str(k): int(v) for k, v in sorted(by_source.items())},
            "confirmed_kept": self.confirmed,
            "unchecked_intents": self.unchecked_intents,
        }


def check_new_labels(
    labelled: Labelled,
    human: pd.DataFrame,
    embed: Callable[[list[str]], np.ndarray],
    cfg: PrepareConfig,
    oos_label: str,
) -> LabelCheck:
    """``labelled.examples()`` with this run's likely-wrong labels taken out (module docstring).

    ``human``: this run's human labels as cleaned (``second_look`` marks the rechecked ones, where the
    labels file has any); ``embed``: texts -> unit vectors (``data_checks.embeddings.Embedder``).
    """
    examples = labelled.examples()
    new, confirmed = _new_and_confirmed(labelled, examples, human)
    empty = examples.iloc[:0].assign(suggested_intent="", given_probability=0.0)
    if not cfg.label_check:
        return LabelCheck(examples, empty, confirmed=int(confirmed.sum()))
    _check_settings(cfg)
    in_scope = examples["intent"] != oos_label
    counts = examples.loc[in_scope, "intent"].value_counts()
    floor = max(cfg.label_check_min_per_intent, cfg.label_check_folds)
    unchecked = {str(k): int(v) for k, v in sorted(counts[counts < floor].items())}
    pool = in_scope & examples["intent"].map(counts).ge(floor)
    candidates = pool & new & ~confirmed
    skipped = None
    if examples.loc[pool, "intent"].nunique() < 2:
        skipped = f"fewer than 2 intents with at least {floor} labelled rows"
    elif not candidates.any():
        skipped = "no new label of an intent with enough rows to check"
    if skipped:
        return LabelCheck(examples, empty, confirmed=int(confirmed.sum()), unchecked_intents=unchecked, skipped=skipped)
    rows = examples[pool]
    classes = sorted(rows["intent"].unique())
    given = rows["intent"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = out_of_sample_probs(embed(rows["text"].tolist()), given, cfg.label_check_folds, cfg.label_check_c)
    flag = label_issues(given, probs, cfg.label_check_method) & candidates[pool].to_numpy()
    flagged = rows[flag].assign(
        suggested_intent=[classes[i] for i in probs[flag].argmax(axis=1)],
        given_probability=probs[flag, given[flag]].round(4),
    )
    return LabelCheck(
        kept=examples.drop(index=flagged.index).reset_index(drop=True),
        flagged=flagged.reset_index(drop=True),
        checked=_by_source(examples.loc[candidates, "source"]),
        confirmed=int(confirmed.sum()),
        unchecked_intents=unchecked,
    )


def _new_and_confirmed(labelled: Labelled, examples: pd.DataFrame, human: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Which rows of ``examples`` (``labelled.examples()``, in its order) are this run's labels, and which
    of those are second looks: the labels file's rows (new texts and relabelled ones) and the auto-labels."""
    keys = examples["text"].map(exact_key)
    from_base = np.arange(len(examples)) < len(labelled.base)
    in_file = keys.isin(set(human["text"].map(exact_key)))
    new = pd.Series(~from_base, index=examples.index) | in_file
    second = human.get("second_look", pd.Series(False, index=human.index)).astype(bool)
    confirmed = new & keys.isin(set(human.loc[second, "text"].map(exact_key)))
    return new, confirmed


def out_of_sample_probs(vectors: np.ndarray, given: np.ndarray, folds: int, c: float) -> np.ndarray:
    """Each row's predicted probabilities from a logistic regression trained on the other folds
    (stratified, seeded); every class needs at least ``folds`` rows."""
    # scikit-learn takes a second or two to import; prepare runs without the check never need it
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    model = LogisticRegression(C=c, max_iter=2000)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
    return cross_val_predict(model, vectors, given, cv=cv, method="predict_proba")


def label_issues(given: np.ndarray, probs: np.ndarray, method: str) -> np.ndarray:
    """cleanlab's mask of likely-wrong labels (``filter_by=method``), in one process: prepare's
    results must not depend on how many cores the machine has, and forking under a test runner or
    in a pod is asking for trouble."""
    from cleanlab.filter import find_label_issues  # imports scikit-learn and more: see out_of_sample_probs

    return find_label_issues(given, probs, filter_by=method, n_jobs=1)


def _check_settings(cfg: PrepareConfig) -> None:
    if cfg.label_check_folds < 2:
        raise FlywheelError(f"label_check_folds must be 2 or more (cross-validation), got {cfg.label_check_folds}")
    if cfg.label_check_c <= 0:
        raise FlywheelError(f"label_check_c must be above 0, got {cfg.label_check_c}")


def _by_source(sources: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(sources.value_counts().items())}
