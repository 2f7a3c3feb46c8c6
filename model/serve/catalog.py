"""The response catalog: which reply the bot sends for each intent, and the hand-off reply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from model.core.errors import FlywheelError


@dataclass(frozen=True)
class ResponseCatalog:
    replies: dict[str, str]
    fallback: str

    @classmethod
    def load(cls, path: str | Path) -> ResponseCatalog:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise FlywheelError(f"cannot read response catalog {path}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("intents"), dict):
            raise FlywheelError(f"{path}: expected a mapping with 'fallback' and 'intents' (intent -> reply)")
        fallback, intents = raw.get("fallback"), raw["intents"]
        if not isinstance(fallback, str) or not fallback.strip():
            raise FlywheelError(f"{path}: 'fallback' must be a non-empty reply text")
        bad = sorted(k for k, v in intents.items() if not isinstance(v, str) or not v.strip())
        if bad:
            raise FlywheelError(f"{path}: empty or non-text reply for intent(s) {', '.join(map(str, bad))}")
        return cls({str(k): v.strip() for k, v in intents.items()}, fallback.strip())

    def check_covers(self, labels: list[str], where: str) -> None:
        """Refuse a model that can answer with an intent the catalog has no reply for."""
        missing = sorted(set(labels) - set(self.replies))
        if missing:
            raise FlywheelError(f"response catalog has no reply for intent(s) {', '.join(missing)} of {where}")

    def reply(self, intent: str, fallback: bool) -> str:
        return self.fallback if fallback else self.replies[intent]
