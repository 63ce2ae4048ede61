"""Helpers shared by test modules (fixtures live in conftest.py): run `vaegen` in-process, check its one-line
errors, read a dataset's rows back with pyarrow alone. No test module imports another."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from click.testing import CliRunner


def invoke(*args: str):
    """`vaegen ARGS` in-process; the command's os.environ defaults (tracking.configure_environment) are undone.

    Only the variables the command changed are written back: the module's Ray runs C++ threads in this process
    that call getenv(), and rewriting the whole environment under them (clear, then update) crashed an xdist
    worker with SIGSEGV in getenv (glibc's setenv is not safe against a concurrent getenv)."""
    from jobs.cli import main

    saved = dict(os.environ)
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        for key in os.environ.keys() - saved.keys():
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def assert_one_error_line(result, exit_code: int, *fragments: str) -> str:
    """Exit code, and exactly one `vaegen: error:` line, the last one on stderr; no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vaegen: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def x_from_arrow(column) -> np.ndarray:
    """x as format 3 stores it (nested fixed-size lists, one level per dimension), read with
    pyarrow alone: every level's size from the type, then the flat values."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    sizes = []
    while pa.types.is_fixed_size_list(array.type):
        sizes.append(array.type.list_size)
        array = array.flatten()
    return array.to_numpy().reshape(-1, *sizes)


def checksum_file(path: Path) -> str:
    """The manifest's checksum (xxh3-128), computed independently of vaegen."""
    return xxhash.xxh3_128(path.read_bytes()).hexdigest()


def part_hashes(directory: Path) -> dict[str, str]:
    return {path.name: checksum_file(path) for path in sorted(directory.glob("part-*.parquet"))}


def read_rows(location: str) -> dict[str, np.ndarray]:
    """Every column of a dataset as numpy arrays, read by pyarrow: z as (n, latent_dim), x with its shape."""
    table = pq.read_table(location)
    rows = {name: table[name].combine_chunks() for name in table.column_names}
    out = {name: column.to_numpy() for name, column in rows.items() if name not in ("z", "x")}
    out["z"] = rows["z"].flatten().to_numpy().reshape(table.num_rows, -1)
    out["x"] = x_from_arrow(rows["x"])
    return out


def generate_dataset(
    root: Path, model: str, n: int, seed: int, rows_per_shard: int, num_workers: int | None = None, **options
):
    """The library call behind `vaegen generate`, on the Ray this process has (or starts)."""
    from jobs.generate.engine import EngineOptions
    from jobs.generate.job import GenerateConfig, generate

    config = GenerateConfig(
        n=n,
        model=model,
        out=str(root),
        seed=seed,
        rows_per_shard=rows_per_shard,
        engine=EngineOptions(num_workers=num_workers),
        **options,
    )
    return generate(config)


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks() -> list[tuple[str, str, str]]:
    """Every fenced code block of README.md as (the heading it sits under, its language, its text)."""
    blocks, heading = [], ""
    pattern = re.compile(r"^(#{1,4} [^\n]*)$|^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    for match in pattern.finditer(README.read_text()):
        if match.group(1):
            heading = match.group(1)
        else:
            blocks.append((heading, match.group(2), match.group(3)))
    return blocks


def readme_block(section: str, language: str = "bash") -> str:
    """The first block of `language` under the heading `section`."""
    found = [text for heading, kind, text in readme_blocks() if heading == section and kind == language]
    assert found, f"no {language} block under {section!r} in README.md"
    return found[0]


def quick_start_folder(root: Path) -> None:
    """What the quick start leaves: ./mlflow.db with vae-decoder v1 as champion, and .venv."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "RAY_"))}
    code = (
        "from jobs.train import TrainJobConfig, run; from vae_core.config import TrainConfig; import mlflow; "
        "r = run(TrainJobConfig(train=TrainConfig(epochs=2), report=False)); from registry import promotion; "
        "promotion.promote(f'{r.pinned.name}/{r.pinned.version}', "
        "promotion.PromotionConfig(reason='quickstart', by='tester', quality=None))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / ".venv").symlink_to(sys.prefix)


def repository_copy(destination: Path) -> None:
    """A clone of this repository as the quick start's user has it (the files git tracks), with a `.venv` whose
    packages are the suite's: its site-packages lists the suite's through a .pth file, so the README's
    `bash deploy/install.sh` runs for real (pip, the editable install of this copy, compileall) in seconds and
    leaves the suite's environment alone."""
    repo = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = repo / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            (destination / name).write_bytes(source.read_bytes())
    subprocess.run([sys.executable, "-m", "venv", str(destination / ".venv")], check=True)
    python = destination / ".venv" / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    suite = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "suite-packages.pth").write_text(suite + "\n")


def shell_env(ray_env) -> dict[str, str]:
    """A shell as a new user has it: no MLflow or Ray variables, a private HOME and Ray temp dir."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "RAY_", "VAEGEN_"))}
    variables = ray_env.variables()
    del variables["RAY_AUTH_MODE"]  # the README decides the auth mode itself
    return {**base, **variables}


def scrape_metrics(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample a Ray node's metrics export port serves, parsed by prometheus_client: (name, labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(samples: dict, name: str, **labels: str) -> float | None:
    """The sum over the series of `name` whose labels include `labels` (one per process that recorded it);
    None where there is none."""
    found = [
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    ]
    return sum(found) if found else None
