"""Fuzz every record vaegen parses (manifest of format 3 and 2, progress record, part sidecar, lock and lease
records, `latest`, config.json, weights.npz and its .npy headers): each of ~350 seeded mutations is accepted or
refused with one line, in under 1 s, within 500 MB more than the imports (RLIMIT_AS in the child), no traceback.
The parsing runs in tests/fuzz_records.py, a child process, so that the memory limit binds it alone."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED, CASES_PER_KIND = 20, 40
MAX_CASE_S = 1.0


def test_every_mutated_record_is_accepted_or_refused_in_one_line_quickly_within_500_mb():
    child = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_records.py"), str(SEED), str(CASES_PER_KIND)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]  # a MemoryError or a kill would end the child early
    rows = [json.loads(line) for line in child.stdout.splitlines()]
    counts = collections.Counter((row["kind"], row["status"]) for row in rows)
    crashes = [f"{row['kind']} #{row['case']}: {row['message']}" for row in rows if row["status"] == "crash"]
    assert not crashes, "\n\n".join(crashes[:3])
    slow = [(row["kind"], row["case"], round(row["seconds"], 2)) for row in rows if row["seconds"] > MAX_CASE_S]
    assert not slow, slow
    multi_line = [row for row in rows if row["status"] == "refused" and "\n" in row["message"]]
    assert not multi_line, multi_line[:3]
    kinds = {"manifest", "manifest-format-2", "progress", "sidecar", "lock", "audit", "latest", "config", "npz"}
    assert len(rows) == len(kinds) * CASES_PER_KIND + 8 + 1, counts
    for kind in kinds:  # the unmutated record (case 0) parses, and the generator does reach refusals
        assert next(row for row in rows if row["kind"] == kind and row["case"] == 0)["status"] == "ok", kind
    for kind in kinds - {"lock"}:  # a lock record is never refused: unreadable fields are dropped
        assert counts[(kind, "refused")] >= 5, counts
    bomb = next(row for row in rows if row["kind"] == "npz-bomb")
    assert bomb["status"] == "refused" and "decompression bomb" in bomb["message"], bomb
    crafted = [row["message"] for row in rows if row["kind"] == "npz-crafted"]
    assert crafted[0] == "ok" and "shape (50000, 2), config.json implies (128, 2)" in crafted[1]
    assert "dtype object, not float32" in crafted[2] and "its header implies" in crafted[4]
