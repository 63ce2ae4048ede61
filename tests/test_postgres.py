"""The whole flow against production's registry: `mlflow server` (two workers) on a real PostgreSQL
(conftest.py's `postgres` fixture, started from Debian's server binaries), with a real local Ray:
train, report, promote, generate, inspect, refresh, promote again, roll back, refresh again. Every
command goes through the CLI; what the server stored is read back from PostgreSQL itself."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import mlflow
import pytest

from conftest import Postgres, private_local_ray, server_log_tail
from helpers import invoke
from registry import promotion
from registry.models import LOCK_MARK

pytestmark = pytest.mark.slow  # a PostgreSQL server, an mlflow server and a Ray

NAME = "vae-pg"
N, ROWS_PER_SHARD = 3_000, 1_000
REPORT_N = 1_000  # generated samples the report compares with the digits


def ok(*args: str):
    result = invoke(*args)
    if result.exit_code != 0:  # the server's side of it too: a 503 from MLflow is a database error in its log
        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
        pytest.fail(f"{args}: {result.output}\nmlflow server log ({tracking}):\n{server_log_tail(tracking)}")
    return result


def line(stdout: str, prefix: str) -> str:
    return next(text for text in stdout.splitlines() if text.startswith(prefix))


def query(server: Postgres, sql: str, *params) -> list[tuple]:
    """What PostgreSQL holds, read without MLflow."""
    import psycopg2

    with (
        psycopg2.connect(host="127.0.0.1", port=server.port, user=server.user, dbname=server.database) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, params)
        return cursor.fetchall()


@pytest.fixture(scope="module")
def ray_address(module_postgres) -> Iterator[str]:
    with private_local_ray() as address:
        yield address


def test_the_whole_flow_on_postgresql(postgres, module_postgres, ray_address, tmp_path):
    trained = ok("train", "--arch", "mlp", "--epochs", "2", "--register-as", NAME, "--no-report")
    assert line(trained.stdout, "registered: ") == f"registered: {NAME}/1"
    assert line(trained.stdout, "tracking: ") == f"tracking: {module_postgres.uri}"
    mlflow.MlflowClient().copy_model_version(f"models:/{NAME}/1", NAME)  # version 2: a second candidate
    assert query(postgres, "SELECT version FROM model_versions WHERE name = %s ORDER BY version", NAME) == [(1,), (2,)]

    reported = ok("report", "--model", f"{NAME}/1", "--n", str(REPORT_N), "--out", str(tmp_path / "report"))
    assert json.loads((tmp_path / "report" / "report.json").read_text())["precision"] >= 0

    ok("promote", f"{NAME}/1", "--reason", "first", "--by", "alice", "--no-quality-gate")
    generated = ok(
        "generate",
        "--model",
        f"{NAME}@champion",
        "--n",
        str(N),
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--seed",
        "5",
        "--out",
        str(tmp_path / "gen"),
    )
    location = line(generated.stdout, "location: ").removeprefix("location: ")
    inspected = ok("inspect", location, "--deep")
    assert "verified: 3 files" in inspected.stdout and f"(resolved from {NAME}@champion)" in inspected.stdout

    root = tmp_path / "refresh"
    refresh = (
        "refresh",
        "--model",
        f"{NAME}@champion",
        "--n",
        str(N),
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--out",
        str(root),
    )
    first = line(ok(*refresh).stdout, "refresh: ")
    assert first.startswith("refresh: generated") and first.endswith("(model version 1)"), first
    v1_dataset = json.loads((root / "latest").read_text())["dataset_id"]
    model = json.loads((root / v1_dataset / "_manifest.json").read_text())["model"]
    assert (model["alias"], model["resolved_from"], model["version"]) == ("champion", f"{NAME}@champion", 1)

    ok("promote", f"{NAME}/2", "--reason", "second", "--by", "bob", "--no-quality-gate")
    assert line(ok(*refresh).stdout, "refresh: ").startswith("refresh: generated")
    assert json.loads((root / "latest").read_text())["model"] == {"name": NAME, "version": 2}

    rolled = ok("rollback", NAME, "--reason", "bad outputs", "--by", "carol")
    assert f"rolled back: {NAME}@champion -> version 1 (was 2)" in rolled.stdout
    assert line(ok(*refresh).stdout, "refresh: ") == f"refresh: pointer-moved {v1_dataset} (model version 1)"

    assert f"history of {NAME}@champion:" in ok("models", NAME).stdout
    assert [
        (event["action"], event["previous_version"], event["version"], event["by"])
        for event in promotion.history(NAME, "champion")
    ] == [("promote", None, 1, "alice"), ("promote", 1, 2, "bob"), ("rollback", 2, 1, "carol")]
    # The server really stored it in PostgreSQL: the alias, and no promotion lock left behind.
    assert query(postgres, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", NAME) == [
        ("champion", 1)
    ]
    assert query(postgres, "SELECT name FROM registered_models WHERE name LIKE %s", f"%{LOCK_MARK}%") == []
    runs = query(postgres, "SELECT status FROM runs WHERE name LIKE %s", f"refresh-{NAME}-%")
    assert sorted(status for (status,) in runs) == ["FINISHED"] * 3
    assert reported.exit_code == 0
