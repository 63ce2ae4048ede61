"""The README's "Publishing and consuming datasets" lines, run verbatim in a folder holding the quick start's
state (an `mlflow.db` whose `vae-decoder@champion` was promoted by vaegen, and `.venv`), with a private HOME
and Ray temp dir; the Ray processes its `vaegen refresh` starts are stopped by their environment tag."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import quick_start_folder, readme_block, shell_env
from ray_cluster import make_ray_env, stop_tagged

pytestmark = pytest.mark.slow  # a trained model, `vaegen` processes, a private Ray

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Publishing and consuming datasets"
COMMAND_TIMEOUT_S = 600


def test_readme_publishing_lines_run_verbatim(tmp_path):
    quick_start_folder(tmp_path)
    ray_env = make_ray_env()
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_block(SECTION)],
            cwd=tmp_path,
            env=shell_env(ray_env),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    finally:
        survivors = stop_tagged(ray_env.tag)
        shutil.rmtree(ray_env.root, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not survivors, survivors
    dataset_id = json.loads((tmp_path / "published" / "latest").read_text())["dataset_id"]
    assert dataset_id == "vae-decoder-v1-n20000-seed0-float32-f3"
    assert f"refresh: generated {dataset_id} (model version 1)" in done.stdout
    assert f"dataset: {dataset_id} at {tmp_path / 'published' / dataset_id}" in done.stdout
    assert f"tagged: {tmp_path / 'published'}@first-release -> {dataset_id}" in done.stdout
    assert f"{dataset_id} 20000" in done.stdout  # open_dataset('published@first-release') says which dataset it read
    assert "audit: PASS" in done.stdout
    listed = [text for text in done.stdout.splitlines() if text.startswith(dataset_id + " ") and " pass " in text]
    assert listed and listed[0].endswith("published, tagged first-release"), done.stdout  # `vaegen datasets`
    assert (
        "alias: vae-decoder@champion -> version 1 (gated by vaegen promote), latest was made from it" in done.stdout
    ), done.stdout
    assert "\ncurrent\n" in done.stdout, done.stdout
    assert "champion(ungated)" not in done.stdout and "champion" in done.stdout
