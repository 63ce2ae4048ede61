"""A promotion gate's verdict: its own module, so that gates living outside promotion.py (privacy_gate.py) share it."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str
    # "nothing to compare with" is, and a failing privacy gate (whether a leak matters depends on the data);
    # a safety, load or quality failure never is
    forceable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
