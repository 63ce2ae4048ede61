"""What the registry holds, for `vaegen models`: every version with its aliases and tags, and each alias's
promotion history."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from registry.models import LOCK_MARK, TAG_PREFIX, check_model_exists, client, versions_of


@dataclasses.dataclass(frozen=True)
class VersionSummary:
    name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str
    created_ms: int
    tags: dict[str, str]


def list_versions(name: str | None = None) -> list[VersionSummary]:
    mlflow_client = client()
    names = (
        [name]
        if name
        else [model.name for model in mlflow_client.search_registered_models() if LOCK_MARK not in model.name]
    )
    summaries = []
    for model_name in names:
        check_model_exists(mlflow_client, model_name)
        aliases: dict[int, list[str]] = {}
        for alias, version_text in mlflow_client.get_registered_model(model_name).aliases.items():
            aliases.setdefault(int(version_text), []).append(alias)
        for version in versions_of(mlflow_client, model_name):
            summaries.append(
                VersionSummary(
                    name=version.name,
                    version=int(version.version),
                    aliases=tuple(sorted(aliases.get(int(version.version), []))),
                    run_id=version.run_id,
                    created_ms=version.creation_timestamp,
                    tags={
                        key.removeprefix(TAG_PREFIX): value
                        for key, value in version.tags.items()
                        if key.startswith(TAG_PREFIX)
                    },
                )
            )
    return sorted(summaries, key=lambda summary: (summary.name, summary.version))


def alias_histories(name: str | None = None) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(model, alias, events) from the promotion history tags, oldest event first."""
    mlflow_client = client()
    found = []
    for model in mlflow_client.search_registered_models():
        if LOCK_MARK in model.name or (name and model.name != name):
            continue
        for key, value in sorted(model.tags.items()):
            if key.startswith(f"{TAG_PREFIX}history."):
                found.append((model.name, key.removeprefix(f"{TAG_PREFIX}history."), json.loads(value)))
    return found
