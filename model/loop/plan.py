"""What the loop decides before anything runs: which intents the first model knows, which texts it trains on,
which ones users send, and a response catalog covering every intent. Pure functions of the dataset and
``LoopConfig`` (seeded), so tests check them without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from model.core.config import DataConfig, LoopConfig
from model.core.errors import FlywheelError
from model.data.examples import in_test_share


@dataclass
class DataPlan:
    """The split dataset's three uses: the first model's training set, what users send, the full test set."""

    seed: pd.DataFrame
    pool: pd.DataFrame
    test: pd.DataFrame


def split_intents(df: pd.DataFrame, cfg: LoopConfig, oos_label: str) -> tuple[list[str], list[str]]:
    """(known at start, held back): named ones, else a seeded draw of ``held_back_fraction`` of the intents."""
    intents = sorted(set(df["intent"]) - {oos_label})
    if cfg.held_back_intents:
        unknown = sorted(set(cfg.held_back_intents) - set(intents))
        if unknown:
            raise FlywheelError(f"loop.held_back_intents names intents not in the dataset: {', '.join(unknown)}")
        held = sorted(cfg.held_back_intents)
    else:
        if not 0 < cfg.held_back_fraction < 1:
            raise FlywheelError(f"loop.held_back_fraction must be between 0 and 1, got {cfg.held_back_fraction}")
        n = max(1, round(len(intents) * cfg.held_back_fraction))
        held = sorted(np.random.default_rng(cfg.seed).choice(intents, size=n, replace=False).tolist())
    known = [i for i in intents if i not in held]
    if len(known) < 2:
        raise FlywheelError(f"only {len(known)} intent(s) left for the first model; hold back fewer")
    return known, held


def plan_data(df: pd.DataFrame, known: list[str], cfg: LoopConfig, data_cfg: DataConfig) -> DataPlan:
    """Seed training set, traffic pool and full test set from one split dataset.

    The first model sees ``seed_fraction`` of the known intents' training texts (plus all their
    validation and test texts, so its gate has a test set); the other training texts, of every
    intent, are what users will send. The test split of every intent measures each model offline.
    Users also send the held-back intents' test texts that ``prepare``'s rule sends back to test
    once labelled (``in_test_share``: all of them where the dataset was split by that rule): so the
    grown test set gets examples of the new intents, as it would from real traffic, and none of
    the full test set is ever trained on.
    """
    oos_label = data_cfg.oos_label
    if not 0 < cfg.seed_fraction < 1:
        raise FlywheelError(f"loop.seed_fraction must be between 0 and 1, got {cfg.seed_fraction}")
    rng = np.random.default_rng(cfg.seed)
    is_known = df["intent"].isin(known)
    train = df[df["split"] == "train"]
    seed_train = (
        train[train["intent"].isin(known)]
        .groupby("intent", group_keys=False)[list(df.columns)]
        .apply(lambda g: g.sample(frac=cfg.seed_fraction, random_state=int(rng.integers(2**31))))
    )
    seed = pd.concat([seed_train, df[df["split"].isin(["val", "test"]) & (is_known | (df["intent"] == oos_label))]])
    pool = df[(df["split"] == "train") & ~df.index.isin(seed_train.index)]
    oos_pool = df[(df["intent"] == oos_label) & (df["split"] == "val")]  # oos texts never train a class
    held_back_test = df[(df["split"] == "test") & ~is_known & (df["intent"] != oos_label)]
    held_back_test = held_back_test[held_back_test["text"].map(lambda t: in_test_share(t, data_cfg))]
    return DataPlan(
        seed=seed.sort_index().reset_index(drop=True),
        pool=pd.concat([pool, oos_pool, held_back_test]).reset_index(drop=True),
        test=df[df["split"] == "test"].reset_index(drop=True),
    )


def draw_traffic(pool: pd.DataFrame, n: int, held_back: list[str], new_share: float, seed: int) -> pd.DataFrame:
    """``n`` user messages from the pool (users repeat themselves: with replacement); ``new_share`` of them
    ask for held-back intents."""
    rng = np.random.default_rng(seed)
    new = pool[pool["intent"].isin(held_back)]
    old = pool[~pool["intent"].isin(held_back)]
    n_new = int(round(n * new_share)) if len(new) else 0
    if n - n_new and old.empty:
        raise FlywheelError("the traffic pool has no messages of the known intents")
    parts = [old.iloc[rng.integers(len(old), size=n - n_new)]]
    if n_new:
        parts.append(new.iloc[rng.integers(len(new), size=n_new)])
    drawn = pd.concat(parts)
    return drawn.iloc[rng.permutation(len(drawn))][["text", "intent"]].reset_index(drop=True)


def response_catalog(base: Path, intents: list[str], out: Path) -> Path:
    """The configured catalog if it covers the dataset's intents, else a copy with a placeholder reply for the rest."""
    raw = yaml.safe_load(Path(base).read_text())
    missing = [i for i in intents if i not in raw.get("intents", {})]
    if not missing:
        return Path(base)
    raw["intents"].update({i: f"(Reply for '{i}': write it in your response catalog.)" for i in missing})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=True, allow_unicode=True))
    return out
