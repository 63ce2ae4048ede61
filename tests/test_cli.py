"""Tier 2: the `vaegen` commands through click's CliRunner against a real SQLite store, and once the
installed console script end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from click.testing import CliRunner

from helpers import invoke
from jobs.cli import main
from vae_core.errors import UsageError


def assert_one_line_error(result, exit_code: int, *fragments: str) -> str:
    """The documented failure shape: exit code, one `vaegen: error:` line on stderr, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaegen: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def read_png(path: Path):
    image = matplotlib.image.imread(path)  # (H, W, 4) floats for an RGBA PNG
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas: samples were drawn
    return image


def test_train_prints_run_and_version(mlflow_sqlite):
    result = invoke("train", "--arch", "mlp", "--epochs", "2", "--hidden", "32,16", "--seed", "5")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"run_id: [0-9a-f]{32}", lines[0]), lines
    assert lines[1] == "registered: vae-decoder/1"
    assert re.fullmatch(r"held-out negative ELBO: \d+\.\d{3} nats per sample", lines[2]), lines
    assert lines[3] == f"tracking: {mlflow_sqlite.uri}"
    # progress goes to stderr (off a terminal: a line at the start, every 10 s and at the end, with the total and
    # the ETA or time taken), results alone on stdout
    assert "train: 0/24 steps" in result.stderr, result.stderr
    done = r"train: 24/24 steps, [\d.,]+ steps/s, done in [\d.]+ s; epoch 2/2, train [\d.]+, held-out [\d.]+ nats"
    assert re.search(done, result.stderr), result.stderr
    assert "epoch" not in result.stdout and "steps" not in result.stdout
    second = invoke("train", "--arch", "mlp", "--epochs", "1", "--hidden", "16")
    assert second.exit_code == 0, second.output
    assert "registered: vae-decoder/2" in second.stdout


def test_sample_writes_a_png(trained_version, tmp_path):
    out = tmp_path / "nested" / "grid.png"
    result = invoke("sample", "--model", "vae-decoder/1", "--n", "16", "--seed", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    read_png(out)


def test_sample_is_reproducible_and_depends_on_seed(trained_version, tmp_path):
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, ("1", "1", "2"), strict=True):
        assert invoke("sample", "--model", "vae-decoder/latest", "--seed", seed, "--out", str(path)).exit_code == 0
    first, same, other = (read_png(path) for path in paths)
    assert (first == same).all()
    assert not (first == other).all()


def test_models_lists_the_version(trained_version):
    result = invoke("models")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.split("\n\n")[0].splitlines()  # the version table comes first
    assert header.split()[:2] == ["model", "version"]
    assert len(rows) == 1
    name, version, aliases, elbo, shape, latent, kind, data, architecture = rows[0].split(maxsplit=8)
    assert (name, version, aliases, shape, latent, kind, data) == (
        "vae-decoder",
        "1",
        "-",
        "8x8",
        "2",
        "unconditional",
        "digits",
    )
    assert architecture == "MLP, hidden 128; 2 epochs of 128, constant schedule"  # the tiny config's budget
    assert float(elbo) == pytest.approx(trained_version.result.val_neg_elbo, abs=1e-5)


def test_models_on_an_empty_store(mlflow_sqlite):
    import mlflow

    mlflow.MlflowClient().search_experiments()  # opening the store creates mlflow.db, with nothing registered
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "no registered models" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("models",),
        ("sample", "--model", "vae-decoder/1"),
        ("rollback", "vae-decoder"),
        ("generate", "--n", "10", "--out", "datasets"),
    ],
)
def test_commands_that_read_the_registry_refuse_a_store_that_does_not_exist(mlflow_sqlite, command):
    """MLflow would create an empty mlflow.db and then call the model unknown; only `train` creates a store."""
    result = invoke(*command)
    assert_one_line_error(result, 2, f"no MLflow store at {mlflow_sqlite.uri}", "run `vaegen train` first")
    assert not (mlflow_sqlite.root / "mlflow.db").exists()
    assert not (mlflow_sqlite.root / "datasets").exists() or not any((mlflow_sqlite.root / "datasets").iterdir())
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()  # refused before any Ray started


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("train", "--epochs", "0"), ("--epochs must be a positive integer, got 0",)),
        (("train", "--hidden", "abc"), ("--hidden", "'abc'")),
        (("train", "--hidden", "64,0"), ("--hidden", "'64,0'")),
        (("train", "--data", "bogus"), ("unknown data source 'bogus'",)),
        (("train", "--holdout-fraction", "1.5"), ("--holdout-fraction",)),
    ],
)
def test_train_usage_errors(mlflow_sqlite, args, fragments):
    result = invoke(*args)
    assert_one_line_error(result, 2, *fragments)
    assert result.stdout == ""


def test_sample_usage_errors(trained_version, tmp_path):
    out = tmp_path / "never.png"
    assert_one_line_error(
        invoke("sample", "--model", "vae-decoder/1", "--n", "0", "--out", str(out)),
        2,
        "--n must be a positive integer, got 0",
    )
    assert_one_line_error(
        invoke("sample", "--model", "no-such-model/1", "--out", str(out)), 2, "'no-such-model' is not registered"
    )
    assert_one_line_error(invoke("sample", "--model", "vae-decoder/7", "--out", str(out)), 2, "no version 7")
    assert_one_line_error(
        invoke("sample", "--model", "vae-decoder@champion", "--out", str(out)), 2, "no alias 'champion'"
    )
    assert not out.exists()


def test_debug_shows_the_traceback(mlflow_sqlite):
    with pytest.raises(UsageError, match="--epochs must be a positive integer"):
        CliRunner().invoke(main, ["--debug", "train", "--epochs", "0"], catch_exceptions=False)
    result = CliRunner().invoke(main, ["--debug", "train", "--data", "bogus"])
    assert isinstance(result.exception, UsageError)
    assert result.exc_info is not None and result.exc_info[2] is not None  # the traceback travels with it
    assert "vaegen: error:" not in result.stderr


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "sample", "models"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.slow
def test_installed_console_script_end_to_end(tmp_path):
    """The installed `vaegen` script in a fresh folder with no MLFLOW_TRACKING_URI: MLflow's local default."""
    script = Path(sys.executable).parent / "vaegen"
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}

    def vaegen(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    trained = vaegen("train", "--epochs", "3", "--prior-flow-steps", "50")  # the default architecture, briefly
    assert trained.returncode == 0, trained.stderr
    assert "registered: vae-decoder/1" in trained.stdout
    assert re.search(r"train: 36/36 steps, .*; epoch 3/3", trained.stderr), trained.stderr  # digits: 12 steps an epoch
    assert re.search(r"prior flow fit: 50/50 steps, .*done in", trained.stderr), trained.stderr
    report_done = r"quality report: 7/7 stages, .*done in .*; privacy done"
    assert re.search(report_done, trained.stderr), trained.stderr
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlruns").is_dir() and any((tmp_path / "mlruns").rglob("weights.npz"))

    sampled = vaegen("sample", "--model", "vae-decoder/latest", "--out", "grid.png")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.strip() == "grid.png"
    read_png(tmp_path / "grid.png")

    failed = vaegen("sample", "--model", "vae-decoder/9", "--out", "never.png")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith("vaegen: error: model 'vae-decoder' has no version 9")
    assert "Traceback" not in failed.stderr and not (tmp_path / "never.png").exists()


def test_every_command_help_shows_examples_that_use_it():
    for name in main.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        examples = (
            result.stdout.split("Examples:", 1)[1].split("Options:", 1)[0].split("\n")
            if "Examples:" in result.stdout
            else []
        )
        uses = [line.strip() for line in examples if line.strip().startswith(("vaegen " + name, "ray job submit"))]
        assert uses, f"`vaegen {name} --help` shows no example of itself:\n{result.stdout}"
    assert "NAME limits the listing to one registered model" in invoke("models", "--help").stdout
    assert "NAME/latest" in invoke("--help").stdout and "NAME/latest" in invoke("sample", "--help").stdout


HEAVY_PROBE = """
import sys
from jobs.cli import main
try:
    main(sys.argv[1:], prog_name="vaegen")
except SystemExit as done:
    code = done.code
print("exit", code, "torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.slow  # starts a local Ray
def test_the_driver_never_imports_torch(trained_version, tmp_path):
    """Commands that do not decode never pay torch's import: usage errors, `models`, and the generate driver
    (its workers decode)."""
    from ray_cluster import make_ray_env, stop_tagged

    ray_env = make_ray_env()
    env = {**os.environ, **ray_env.variables(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    try:
        for args, code in (
            (["generate", "--n", "-5"], 2),
            (["models"], 0),
            (["generate", "--model", "vae-decoder/1", "--n", "1000", "--out", str(tmp_path)], 0),
        ):
            done = subprocess.run(
                [sys.executable, "-c", HEAVY_PROBE, *args], env=env, capture_output=True, text=True, timeout=300
            )
            assert done.stderr.strip().splitlines()[-1] == f"exit {code} False", (args, done.stderr[-3000:])
        assert any(tmp_path.glob("*/_manifest.json"))  # the dataset was committed
    finally:
        stop_tagged(ray_env.tag)
