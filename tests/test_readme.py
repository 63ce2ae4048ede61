"""README.md's code blocks: each one is run by a test as it is written, or listed in NOT_RUN with why.

The reader lines ("Reading a dataset") run verbatim, in one fresh Python process, on a real 28x28 dataset
(written by the job's own PartWriter, no Ray needed to make it), beside a stale Ray address file such as a
killed `ray start` leaves: each line's x must come out with its shape and the exact stored values.
The cluster block runs in tests/test_cluster_path.py, whose extraction helper this module uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers import readme_block, readme_blocks
from jobs.generate import card
from ray_cluster import free_port, make_ray_env, stop_tagged
from tiny_datasets import labelled_spec, write_dataset
from vae_core.config import VAEConfig
from vae_core.model import Decoder

READER_SECTION = "## Reading a dataset"
QUICK_START_AND_WEBHOOK = "tests/test_webhook.py::test_readme_quick_start_then_refresh_on_promotion_run_verbatim"
RUN_BY = {  # (heading, language) -> the test that runs its blocks verbatim
    ("## Run on a Ray cluster", "bash"): "tests/test_cluster_path.py::test_readme_cluster_lines_run_verbatim",
    (READER_SECTION, "python"): "tests/test_readme.py::test_reader_lines_run_verbatim_beside_a_stale_ray_address",
    ("## Training on a vaegen dataset", "python"): "tests/test_reader_training.py",
    ("## Publishing and consuming datasets", "bash"): "tests/test_readme_publishing.py",
    ("## Quick start: one command", "bash"): QUICK_START_AND_WEBHOOK,
    ("### GPU check: `bash benchmarks/gpu_check.sh`", "bash"): "tests/test_gpu_check.py (n = 2,000, CUDA absent)",
    ("### Refresh on promotion", "bash"): QUICK_START_AND_WEBHOOK,
    (
        "## Watching a job",
        "bash",
    ): "tests/test_metrics.py::test_readme_block_shows_progress_and_metrics_of_a_submitted_job",
}
NOT_RUN = {  # (heading, language) -> why no test runs it (the lead decides whether that is acceptable)
    ("# vaegen", ""): "a diagram, not code",
    ("## Tests: one command", "bash"): "it is the test suite itself (.ci/run runs it: test_ci_runs_the_readme_line)",
    ("## Commands", "bash"): "a reference of every command with placeholder data, registries and buckets "
    "(mnist:/data/mnist, https://mlflow.prod.example, s3://bucket): not run, but every line is parsed by the real "
    "CLI (test_every_line_of_the_commands_reference_parses_with_the_real_cli) and each command has CLI tests",
}
PROCESS_TIMEOUT_S = 420  # imports torch, Ray, datasets, polars, DuckDB and starts a local Ray; minutes under load

# Runs in the child: DIR, then each snippet of the reader blocks in one namespace; after each, what it made.
HARNESS = r'''
import ast, json, sys
import numpy as np
DIR = sys.argv[1]
namespace = {"DIR": DIR}
found = []

def shape_of(value):
    """x's shape (and the first row's values) in whatever a snippet's name holds."""
    import ray.data, datasets, torch.utils.data
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, ray.data.Dataset):
        return value.take_batch(8)["x"]
    if isinstance(value, datasets.Dataset):
        return np.asarray(value.with_format("numpy")[:8]["x"])
    if isinstance(value, dict):
        return np.asarray(value["x"])
    if isinstance(value, (torch.utils.data.DataLoader, torch.utils.data.IterableDataset)):
        return next(iter(value))["x"].numpy()
    if hasattr(value, "__next__"):
        return next(value)["x"]
    return None

for snippet in json.loads(sys.stdin.read()):
    exec(compile(snippet, "README.md", "exec"), namespace)
    names = [target.id for node in ast.parse(snippet).body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)]
    for name in names:
        x = shape_of(namespace[name])
        if x is not None:
            found.append({"line": snippet.splitlines()[0], "name": name, "shape": list(x.shape),
                          "first": np.asarray(x[0], dtype=np.float64).ravel().tolist()})
print("RESULT " + json.dumps(found))
'''


def snippets(block: str) -> list[str]:
    """A block's paragraphs: each reader's lines."""
    return [part.strip() + "\n" for part in block.split("\n\n") if part.strip()]


def test_every_readme_block_is_run_or_listed_with_a_reason():
    blocks = {(heading, language) for heading, language, _ in readme_blocks()}
    unaccounted = blocks - set(RUN_BY) - set(NOT_RUN)
    assert not unaccounted, f"README blocks no test runs and NOT_RUN does not excuse: {unaccounted}"
    assert not (set(RUN_BY) | set(NOT_RUN)) - blocks, "RUN_BY / NOT_RUN name blocks the README no longer has"


def test_the_design_contracts_cited_by_the_readme_and_cards_are_in_the_repository():
    root = Path(__file__).resolve().parents[1]
    assert (root / card.DESIGN_DOC).is_file()
    text = (root / card.DESIGN_DOC).read_text()
    assert "splitmix64-boxmuller-v1" in text and "## Contract 2" in text and "## Contract 3" in text
    assert f"({card.DESIGN_DOC})" in (root / "README.md").read_text()


@pytest.fixture(scope="module")
def dataset_28x28(tmp_path_factory) -> Path:
    torch.manual_seed(0)  # a class-conditional 28x28 decoder, as `vaegen train --data mnist:... --conditional` makes
    config = VAEConfig(input_shape=(28, 28), num_classes=10, class_prior=(0.1,) * 10)
    state = {key: value.numpy().copy() for key, value in Decoder(config).eval().state_dict().items()}
    folder = write_dataset(tmp_path_factory.mktemp("readme-data"), labelled_spec(sample_shape=(28, 28)), config, state)
    assert f"vaegen `{card.DESIGN_DOC}`, contract 1" in (folder / card.CARD).read_text()  # a path that exists
    return folder


def test_reader_lines_run_verbatim_beside_a_stale_ray_address(dataset_28x28):
    blocks = [text for heading, language, text in readme_blocks() if (heading, language) == (READER_SECTION, "python")]
    assert len(blocks) == 2  # the readers, then jobs.reader's API
    parts = [snippet for block in blocks for snippet in snippets(block)]
    ray_env = make_ray_env()
    stale = ray_env.temp_dir / "ray_current_cluster"  # what a killed `ray start` leaves: a dead cluster's address
    stale.parent.mkdir(parents=True)
    stale.write_text(f"127.0.0.1:{free_port()}")
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            [sys.executable, "-c", HARNESS, str(dataset_28x28)],
            input=json.dumps(parts),
            env=ray_env.environ(PYTHONPATH=str(root)),
            cwd=root,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_S,
        )
    finally:
        survivors = stop_tagged(ray_env.tag)
    assert not survivors, survivors
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.split("RESULT ", 1)[1])
    stored = pq.read_table(dataset_28x28, columns=["x"])["x"].combine_chunks()
    values = stored.flatten().flatten().to_numpy().reshape(-1, 28, 28)
    assert {item["line"] for item in found} == {part.splitlines()[0] for part in parts}, found  # each gave an x
    whole = 0
    for item in found:
        assert item["shape"][-2:] == [28, 28], item  # x with its shape: a batch, a row or the whole dataset
        if item["shape"][0] == len(values):  # the whole dataset in sample_id order: row 0 exactly
            assert np.array_equal(np.asarray(item["first"], dtype=np.float32), values[0].ravel()), item["line"]
            whole += 1
    assert whole >= 6, found  # pyarrow, pandas, polars, DuckDB, datasets, to_numpy


def test_ci_runs_the_readme_test_line():
    """CI runs the README's test command, character for character, as its last line."""
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == readme_block("## Tests: one command").strip()


def test_every_line_of_the_commands_reference_parses_with_the_real_cli():
    """The Commands block names placeholder registries, buckets and data (it is not run), but each of its lines
    is a command the CLI accepts as written: the command exists, every option and value parses, nothing required
    is missing (click's own parser, stopped before the command runs)."""
    import shlex

    import click

    from jobs.cli import main

    lines = [line.split("  #")[0].strip() for line in readme_block("## Commands").splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert len(commands) >= 15, commands  # the block was read: every command family is there
    for line in commands:
        words = shlex.split(line.replace("$PWD", "/tmp"))
        if words[:3] == ["ray", "job", "submit"]:
            words = ["vaegen", *words[words.index("--") + 1 :]]  # the job's entrypoint: the `generate` script
        assert words[0] == "vaegen", line
        group_context = main.make_context("vaegen", words[1:2] + ["--help"], resilient_parsing=True)
        command = main.get_command(group_context, words[1])
        assert command is not None, f"README's Commands: no command {words[1]!r} in {line!r}"
        args = words[2:]
        while isinstance(command, click.Group):  # `vaegen webhook serve ...`
            command, args = command.get_command(group_context, args[0]), args[1:]
        try:
            command.make_context(words[1], args)
        except click.UsageError as error:
            pytest.fail(f"README's Commands line {line!r} does not parse: {error.format_message()}")
