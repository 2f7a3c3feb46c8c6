"""Intent discovery: the review queue's clusters proposed as candidate new intents, one decision each.

Every cluster of the review candidates (``model.prepare.clusters``: traffic the model did not
handle, fallback, low confidence or rejected answers) of at least ``cluster_min_size`` messages is
a candidate (``propose_intents``), with its size (distinct messages and traffic), what the model
said of it, its most typical messages (nearest the cluster's centre) and a suggested name from its
frequent words (``suggest_names``: class-based TF-IDF, each cluster one document, so words every
cluster uses weigh little; stop words left out; the top words joined with ``_``).

``write_candidates`` puts them next to the review queue, in ``review/``:

- ``new_intent_candidates.csv``: one row per cluster with an empty ``name`` column to fill, the
  ``suggested_name``, the typical messages (`` | `` between them), and ``members``, the cluster's
  messages as JSON (``[{"text": ...}]``, each with the model's ``entities`` when the training set
  has entity types);
- ``new_intent_candidates.json``: the same, plus each member's ``request_id``, for tools.

A reviewer accepts a candidate by writing a name in its row (the suggestion, a better one, or a
known intent's name when the cluster is a known intent the model misroutes) and leaves the others
blank. ``flywheel prepare --cluster-names new_intent_candidates.csv`` (``read_cluster_names``) then
labels every member of a named cluster with that name, ``source`` human: the name is typed, so it
is accepted as an intent (normalised as Label Studio's typed names, ``label_studio.intent_name``),
and the members keep the model's entity spans. A message the reviewer also labelled one by one
(``--labels``) keeps that label: it was looked at more closely.

``cluster_purity`` and ``held_back_found`` measure the proposals against a ground truth (the loop
benchmark's): a held-back intent is found when some cluster has it as its majority with a share
of at least ``min_purity``.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from model.core.config import PrepareConfig
from model.core.errors import FlywheelError
from model.data.entities import dump_spans, parse_cell
from model.data.readers import read_table
from model.prepare.clusters import POOLED
from model.prepare.entity_labels import COLUMN as ENTITIES
from model.prepare.entity_labels import canonical, cells
from model.prepare.label_studio import intent_name

MIN_PURITY = 0.7  # the loop benchmark's bar for "this cluster is that intent" (issue 14)

CANDIDATE_COLUMNS = [
    "cluster",
    "name",
    "suggested_name",
    "messages",
    "traffic",
    "mean_confidence",
    "model_said",
    "typical_messages",
    "members",
]


def propose_intents(
    clustered: pd.DataFrame, vectors: np.ndarray, cfg: PrepareConfig, entity_types: list[str] = ()
) -> list[dict]:
    """One candidate per cluster of ``clustered`` (``cluster_review``'s, ``vectors`` in its row order)."""
    frame = clustered.reset_index(drop=True)
    ids = sorted(c for c in set(frame["cluster"]) if c != POOLED)
    if not ids:
        return []
    groups = [frame.index[frame["cluster"] == c].to_numpy() for c in ids]
    pooled = list(frame.loc[frame["cluster"] == POOLED, "text"])
    # the pooled one-offs are one more document: words they share with a cluster are not its own
    names = suggest_names([list(frame.loc[g, "text"]) for g in groups] + [pooled], cfg.candidate_name_words)
    types = set(entity_types)
    # the model's spans of known types, as the queue's CSV pre-fills them: what naming the cluster accepts
    entities = [_known(canonical(c), types) for c in cells(frame)] if types else None
    out = []
    for cluster, rows, name in zip(ids, groups, names):
        members = frame.loc[rows]
        centre = vectors[rows].mean(axis=0)
        nearest = rows[np.argsort(-(vectors[rows] @ centre), kind="stable")[: cfg.candidate_examples]]
        said = members["predicted_intent"].value_counts(normalize=True).head(3)
        out.append(
            {
                "cluster": int(cluster),
                "suggested_name": name,
                "messages": len(members),
                "traffic": int(members["traffic"].sum()),
                "mean_confidence": round(float(members["confidence"].mean()), 4),
                "model_said": {str(k): round(float(v), 3) for k, v in said.items()},
                "typical_messages": list(frame.loc[nearest, "text"]),
                "members": [
                    {
                        "text": frame.at[r, "text"],
                        "request_id": str(frame.at[r, "request_id"]),
                        **({ENTITIES: entities[r]} if entities is not None else {}),
                    }
                    for r in rows
                ],
            }
        )
    return out


def candidate_summary(candidates: list[dict]) -> list[dict]:
    """The candidates as the datasheet lists them: without their members (the CSV has those)."""
    kept = ("cluster", "suggested_name", "messages", "traffic", "model_said", "typical_messages")
    return [{k: c[k] for k in kept} for c in candidates]


def _known(cell: str, types: set[str]) -> str:
    return dump_spans([s for s in json.loads(cell) if s["type"] in types])


# scikit-learn's English stop words are a general list (its docs warn of its quirks): it drops words a
# support message is about ("top up", "bill", "amount", "name") and keeps the filler of chat
KEPT_WORDS = {"amount", "back", "bill", "call", "detail", "empty", "fill", "find", "found", "interest", "move"}
KEPT_WORDS |= {"name", "system", "top", "up"}
CHAT_FILLER = {"did", "didn", "does", "doesn", "don", "hello", "help", "hey", "hi", "im", "isn", "just", "like"}
CHAT_FILLER |= {"ll", "need", "thank", "thanks", "ve", "want", "wasn"}


def suggest_names(documents: list[list[str]], words: int) -> list[str]:
    """A name per document (a cluster's texts): its ``words`` highest-scoring terms joined by ``_``."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer  # seconds to import

    joined = [" ".join(d) for d in documents]
    stop = sorted((ENGLISH_STOP_WORDS - KEPT_WORDS) | CHAT_FILLER)
    # letters only: numbers and placeholders' brackets say nothing about what the message asks
    vectorizer = TfidfVectorizer(stop_words=stop, token_pattern=r"(?u)\b[^\W\d_]{2,}\b", sublinear_tf=True)
    try:
        scores = vectorizer.fit_transform(joined).toarray()
    except ValueError:  # nothing but stop words anywhere: no vocabulary
        return [f"cluster_{n}" for n in range(1, len(documents) + 1)]
    terms = vectorizer.get_feature_names_out()
    names = []
    for n, row in enumerate(scores, 1):
        top = sorted((t for t in range(len(terms)) if row[t] > 0), key=lambda t: (-row[t], terms[t]))[:words]
        names.append("_".join(terms[t] for t in top) or f"cluster_{n}")
    return names


def write_candidates(candidates: list[dict], folder: Path) -> dict[str, str]:
    """``new_intent_candidates.json`` and ``.csv`` in ``folder`` (module docstring); both, even if empty."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "new_intent_candidates": folder / "new_intent_candidates.csv",
        "new_intent_candidates_json": folder / "new_intent_candidates.json",
    }
    out["new_intent_candidates_json"].write_text(json.dumps(candidates, indent=1, ensure_ascii=False) + "\n")
    rows = [
        {
            **{k: c[k] for k in ("cluster", "suggested_name", "messages", "traffic", "mean_confidence")},
            "name": "",
            "model_said": "; ".join(f"{i} {share:.0%}" for i, share in c["model_said"].items()),
            "typical_messages": " | ".join(c["typical_messages"]),
            "members": json.dumps(
                [{k: v for k, v in m.items() if k != "request_id"} for m in c["members"]], ensure_ascii=False
            ),
        }
        for c in candidates
    ]
    pd.DataFrame(rows, columns=CANDIDATE_COLUMNS).to_csv(
        out["new_intent_candidates"], index=False, quoting=csv.QUOTE_MINIMAL
    )
    return {k: str(v) for k, v in out.items()}


def read_cluster_names(path: Path) -> pd.DataFrame:
    """Human labels (``text, intent, entities``) from a candidates CSV with ``name`` filled in."""
    path = Path(path)
    if not path.is_file():
        raise FlywheelError(f"{path}: no such cluster names file")
    df = read_table(path)
    missing = [c for c in ("name", "members") if c not in df.columns]
    if missing:
        raise FlywheelError(f"{path}: missing column(s) {', '.join(missing)} (expected new_intent_candidates.csv)")
    rows = []
    for n, (name, cell) in enumerate(zip(df["name"], df["members"])):
        if not str(name).strip():
            continue
        where = f"{path}: line {n + 2}"
        intent = intent_name(name, where)
        try:
            members = json.loads(cell)
        except json.JSONDecodeError as exc:
            raise FlywheelError(f"{where}: members is not JSON ({exc.msg})") from None
        if not isinstance(members, list) or not all(isinstance(m, dict) and "text" in m for m in members):
            raise FlywheelError(f'{where}: members must be a JSON list of {{"text": ...}} objects')
        for member in members:
            text = str(member["text"])
            spans = parse_cell(member.get(ENTITIES, ""), text, where)
            lead = len(text) - len(text.lstrip())
            spans = [{**s, "start": s["start"] - lead, "end": s["end"] - lead} for s in spans]
            rows.append((text.strip(), intent, dump_spans(spans)))
    return pd.DataFrame(rows, columns=["text", "intent", ENTITIES]).drop_duplicates(subset="text")


def cluster_purity(truths: list[str]) -> tuple[str | None, float]:
    """The majority value of ``truths`` (a cluster's members' true intents) and its share."""
    if not truths:
        return None, 0.0
    # the alphabetically first of equally frequent intents: the same answer every time
    intent, count = min(Counter(truths).items(), key=lambda kv: (-kv[1], kv[0]))
    return intent, count / len(truths)


def held_back_found(clusters: list[list[str]], held_back: set[str], min_purity: float = MIN_PURITY) -> dict[str, float]:
    """Held-back intents some cluster has as its majority at ``min_purity`` or more -> the best such purity."""
    found: dict[str, float] = {}
    for truths in clusters:
        intent, purity = cluster_purity(truths)
        if intent in held_back and purity >= min_purity:
            found[intent] = max(found.get(intent, 0.0), round(purity, 4))
    return dict(sorted(found.items()))


def candidate_truths(candidates: list[dict], truth_by_request: dict[str, str]) -> list[list[str]]:
    """Each candidate's members' true intents, looked up by their request id (members without one are left out)."""
    return [
        [truth_by_request[m["request_id"]] for m in c["members"] if m.get("request_id") in truth_by_request]
        for c in candidates
    ]


def discovery_figures(candidates_json: Path, truth_by_request: dict[str, str], held_back: set[str]) -> dict:
    """What the bench reports: candidates proposed, and held-back intents found as a cluster ``MIN_PURITY`` pure."""
    candidates = json.loads(Path(candidates_json).read_text())
    truths = candidate_truths(candidates, truth_by_request)
    found = held_back_found(truths, held_back)
    pure = sum(cluster_purity(t)[1] >= MIN_PURITY for t in truths)
    return {
        "candidates": len(candidates),
        "candidates_pure": int(pure),
        "min_purity": MIN_PURITY,
        "held_back_found": len(found),
        "held_back": len(held_back),
        "found_purity": found,
    }
