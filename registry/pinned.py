"""A registered version resolved once: the record everything downstream names instead of an alias. Its own
module (dataclasses only) so that lineage and models both use it without importing each other."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class PinnedModel:
    """One registered version, resolved once: everything downstream names this, never an alias."""

    name: str
    version: int
    run_id: str
    source: str
    resolved_from: str  # the reference the user gave, e.g. "vae-decoder@champion"
    alias: str | None = None
    alias_gate: str | None = None  # for an alias: "promoted" (vaegen's passing record) or "ungated (--allow-ungated)"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
