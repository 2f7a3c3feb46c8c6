"""The review queue's clusters: labels spread over the confusions instead of spent on one.

Ordering by confidence alone hands a reviewer ten messages of the same confusion (one new intent
the model routes nowhere, say) before the first of the next one. Here the review candidates are
embedded (``data_checks.embeddings``: the packaged MiniLM, cached under ``<work>/embeddings``) and
grouped by agglomerative clustering (scikit-learn, average linkage on cosine distance, cut at
``cluster_distance``): deterministic, no number of clusters to guess, and a message unlike the
others stays on its own. Groups smaller than ``cluster_min_size`` are one-offs, pooled into one
group (cluster ``-1``), as are candidates past ``cluster_max_messages`` (the least confident are
clustered first).

The queue then takes the groups in turns (``diverse_order``): the item ranked ``r`` within its
group (least confident first, then most frequent, as ``order_queue``) comes at ``r / traffic **
cluster_weight``, so every group's first item comes before any group's second, and a big group
gets more of the labels after that, with the square root of its traffic by default. Ties go to the
group with the most uncertain traffic (the sum of ``traffic * (1 - confidence)``), which is also
how clusters are numbered: cluster 1 is the most uncertain traffic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_checks.embeddings import Embedder
from model.core.config import PrepareConfig
from model.prepare.review_queue import order_queue

POOLED = -1  # the cluster id of one-offs and of candidates past the clustering limit


def embed(texts: list[str], cfg: PrepareConfig, work: Path) -> np.ndarray:
    """One unit vector per text from ``cfg.review_encoder``, cached where the drift check caches its own."""
    return Embedder(cfg.review_encoder, work / "embeddings")(list(texts))


def cluster_review(
    review: pd.DataFrame, vectors: np.ndarray | None, cfg: PrepareConfig
) -> tuple[pd.DataFrame, np.ndarray]:
    """``review`` in ``order_queue`` order with a ``cluster`` column, and its vectors in the same order.

    ``vectors``: one per row of ``review`` (any unit vectors; tests inject their own); None: no
    clusters, every row pooled (the queue is then ``order_queue``'s)."""
    ordered = order_queue(review.assign(_row=np.arange(len(review))))
    rows = ordered.pop("_row").to_numpy()
    if vectors is None:
        return ordered.assign(cluster=POOLED), np.zeros((len(ordered), 0), dtype=np.float32)
    vectors = np.asarray(vectors)[rows]
    head = min(len(ordered), cfg.cluster_max_messages)
    labels = np.full(len(ordered), POOLED)
    if head >= 2:
        from sklearn.cluster import AgglomerativeClustering  # seconds to import; prepare without a queue skips it

        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=cfg.cluster_distance, metric="cosine", linkage="average"
        )
        labels[:head] = model.fit_predict(vectors[:head])
    elif head == 1:
        labels[0] = 0
    return ordered.assign(cluster=_renumbered(ordered, labels, cfg.cluster_min_size)), vectors


def _renumbered(ordered: pd.DataFrame, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Cluster ids 1, 2, ... from the most uncertain traffic down; groups under ``min_size`` pooled."""
    frame = pd.DataFrame({"label": labels, "weight": _uncertain_traffic(ordered)})
    frame = frame[frame["label"] != POOLED]
    sizes = frame.groupby("label").size()
    kept = frame[frame["label"].isin(sizes[sizes >= min_size].index)]
    # first-appearance position breaks ties, so the numbering depends on nothing but the input
    stats = kept.reset_index().groupby("label").agg(weight=("weight", "sum"), first=("index", "min"))
    ranked = stats.sort_values(["weight", "first"], ascending=[False, True]).index
    number = {label: n for n, label in enumerate(ranked, 1)}
    return np.array([number.get(label, POOLED) for label in labels])


def _uncertain_traffic(queue: pd.DataFrame) -> np.ndarray:
    return queue["traffic"].to_numpy(dtype=float) * (1.0 - queue["confidence"].to_numpy(dtype=float))


def diverse_order(clustered: pd.DataFrame, cfg: PrepareConfig) -> pd.DataFrame:
    """``clustered`` (``cluster_review``'s) with the groups taken in turns (module docstring)."""
    if clustered.empty:
        return clustered.reset_index(drop=True)
    frame = clustered.reset_index(drop=True)
    group = frame["cluster"]
    rank = frame.groupby("cluster").cumcount().to_numpy()
    traffic = frame.groupby("cluster")["traffic"].transform("sum").to_numpy(dtype=float)
    uncertain = pd.Series(_uncertain_traffic(frame)).groupby(group).transform("sum").to_numpy()
    keys = pd.DataFrame(
        {"turn": rank / np.maximum(traffic, 1.0) ** cfg.cluster_weight, "uncertain": -uncertain, "group": group}
    )
    order = keys.sort_values(["turn", "uncertain", "group"], kind="stable").index
    return frame.loc[order].reset_index(drop=True)
