"""MLflow search filters built from values vaegen does not control (model names, tag values): one place quotes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def quoted(value: str) -> str | None:
    """`value` as a literal in an MLflow filter string, or None when no literal can hold it. MLflow's parser has
    no escapes: a literal is whatever lies between two quotes, so `it's` must be enclosed in double quotes and
    a value holding both quote characters cannot be written at all (search without the clause and compare)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


def search_equal(
    search: Callable[..., list[Any]], key: str, value: str, read: Callable[[Any], str], extra: str = "", **options: Any
) -> list[Any]:
    """`search(filter_string=...)` for items whose `key` equals `value` (and `extra`, a clause vaegen wrote);
    for a value no literal can hold, the same search without that clause, compared here with `read(item)`."""
    literal = quoted(value)
    clauses = [clause for clause in (f"{key} = {literal}" if literal else "", extra) if clause]
    found = search(filter_string=" and ".join(clauses) or None, **options)
    return found if literal else [item for item in found if read(item) == value]
