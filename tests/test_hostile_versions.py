"""Issue 20's probes, through the CLI against a real SQLite MLflow registry: versions registered by hand (foreign
model code with copied tags, configs and weights.npz whose sizes would dictate allocations) and hand-edited
manifests are refused in one line, quickly, before anything is loaded, run or allocated."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import invoke
from registry import evidence, models, promotion
from registry.models import MODEL_ARTIFACT, TAG_PREFIX

ROOT = Path(__file__).resolve().parents[1]
MODEL = "vae-decoder"
QUICK_S = 30.0  # a refusal on a loaded 2-core machine, download included; before the fix these ran for minutes or OOMed


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaegen: error: "), result.stderr[-2000:]
    return lines[0]


def register_by_hand(folder: Path, doctor: Callable[[Path], None]) -> int:
    """v1's artifacts changed by `doctor`, registered as anyone with write access could, with EVERY vaegen.* tag of v1
    copied onto it (the evidence seal included)."""
    client = mlflow.MlflowClient()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/1", dst_path=str(folder)))
    doctor(local)
    run = client.create_run(client.get_experiment_by_name("vaegen-train").experiment_id, run_name="by-hand")
    client.log_artifacts(run.info.run_id, str(local), MODEL_ARTIFACT)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run.info.run_id)
    for key, value in client.get_model_version(MODEL, "1").tags.items():
        if key.startswith(TAG_PREFIX):
            client.set_model_version_tag(MODEL, version.version, key, value)
    return int(version.version)


def os_system_code(marker: Path) -> Callable[[Path], None]:
    def doctor(local: Path) -> None:
        code = local / "pyfunc_decoder.py"
        code.write_text(f"import os\nos.system('touch {marker}')\n" + code.read_text())

    return doctor


def edit_config(**changes) -> Callable[[Path], None]:
    def doctor(local: Path) -> None:
        path = local / "artifacts" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return doctor


def deflate_bomb(local: Path) -> None:
    """weights.npz whose first member is a valid header then 256 MiB of deflated zeros (~250 KB on disk)."""
    path = local / "artifacts" / "weights.npz"
    with np.load(path) as weights:
        arrays = {key: weights[key] for key in weights.files}
    first = next(iter(arrays))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{first}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, np.lib.format.header_data_from_array_1_0(arrays[first]))
            for _ in range(256):
                member.write(bytes(1 << 20))
        for key, array in arrays.items():
            if key != first:
                buffer = io.BytesIO()
                np.save(buffer, array)
                archive.writestr(f"{key}.npy", buffer.getvalue())


def other_weights(local: Path) -> None:
    path = local / "artifacts" / "weights.npz"
    with np.load(path) as weights:
        arrays = {key: weights[key] + np.float32(0.5) for key in weights.files}
    np.savez(path, **arrays)


def test_foreign_code_with_copied_tags_is_refused_by_promote_forced_or_not_by_sample_and_flagged(
    untrained_version, tmp_path
):
    marker = tmp_path / "FOREIGN-CODE-RAN"
    version = register_by_hand(tmp_path / "artifacts", os_system_code(marker))
    for force in ([], ["--force"]):
        started = time.perf_counter()
        result = invoke("promote", f"{MODEL}/{version}", "--alias", "champion", "--reason", "probe", *force)
        assert result.exit_code == 1, result.output
        assert (
            "gate safe_artifacts FAIL  refused: code file pyfunc_decoder.py differs from vaegen's own" in result.stdout
        )
        assert time.perf_counter() - started < QUICK_S
    assert "champion" not in mlflow.MlflowClient().get_registered_model(MODEL).aliases
    out = tmp_path / "grid.png"
    result = invoke("sample", "--model", f"{MODEL}/{version}", "--out", str(out))
    assert result.exit_code == 1 and not out.exists()
    assert f"{MODEL}/{version} is refused: code file pyfunc_decoder.py differs from vaegen's own" in one_error_line(
        result
    )
    listing = invoke("models").stdout.splitlines()
    flagged = [index for index, line in enumerate(listing) if "REFUSED: not vaegen's own model code" in line]
    assert [listing[index - 1].split()[1] for index in flagged] == [str(version)], listing
    assert not marker.exists()


def test_generate_refuses_foreign_code_before_writing_anything(untrained_version, tmp_path):
    from conftest import private_local_ray

    marker = tmp_path / "FOREIGN-CODE-RAN"
    version = register_by_hand(tmp_path / "artifacts", os_system_code(marker))
    out = tmp_path / "out"
    with private_local_ray():
        result = invoke("generate", "--model", f"{MODEL}/{version}", "--n", "10", "--seed", "0", "--out", str(out))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()  # progress lines first (diagnostics go to stderr), then the one error
    assert [line for line in lines if line.startswith("vaegen: error: ")] == lines[-1:], result.stderr[-2000:]
    assert f"{MODEL}/{version} is refused: code file pyfunc_decoder.py differs" in lines[-1]
    assert "Traceback" not in result.stderr
    assert not list(out.rglob("*")) if out.exists() else True  # no folder, no progress record, no lock left
    assert not marker.exists()


@pytest.mark.parametrize(
    ("doctor", "fragment"),
    [
        (edit_config(hidden_sizes=[50_000, 50_000]), "each of hidden_sizes must be an integer in [1, 16,384]"),
        (edit_config(latent_dim=10**9), "latent_dim must be an integer in [1, 4,096]"),
        (edit_config(prior_flow_layers=10**6), "prior_flow_layers must be an integer in [0, 64]"),
        (edit_config(hidden_sizes=[16_000, 16_000]), "config.json implies 257,088,064 decoder parameters, more than"),
        (edit_config(hidden_sizes=[4_000, 4_000]), "weights.npz holds 4 arrays, config.json implies 6"),
        (edit_config(prior_flow_layers=8, prior_flow_hidden=1_000), "weights.npz holds 4 arrays, config.json implies"),
        (deflate_bomb, "a decompression bomb"),
    ],
    ids=[
        "hidden-50000",
        "latent-1e9",
        "flow-layers-1e6",
        "parameters-257M",
        "hidden-4000-mismatch",
        "flow-mismatch",
        "deflate-bomb",
    ],
)
def test_sizes_a_version_states_are_checked_before_anything_is_built(untrained_version, tmp_path, doctor, fragment):
    version = register_by_hand(tmp_path / "artifacts", doctor)
    started = time.perf_counter()
    result = invoke("sample", "--model", f"{MODEL}/{version}", "--out", str(tmp_path / "grid.png"))
    assert result.exit_code == 1 and fragment in one_error_line(result), result.stderr
    assert time.perf_counter() - started < QUICK_S
    gates = promotion.promote(
        f"{MODEL}/{version}", promotion.PromotionConfig(alias=f"size{version}", reason="probe", force=True)
    ).gates
    assert [(gate.name, gate.passed, gate.forceable) for gate in gates] == [
        ("safe_artifacts", True, False),
        ("loads", False, False),
    ]
    assert fragment in gates[1].detail


def test_copied_evidence_tags_are_not_evidence(untrained_version, tmp_path):
    """Clean code, other weights, every tag of v1 copied: the ELBO gate cannot compare, so only --force promotes."""
    holder = promotion.promote(f"{MODEL}/1", promotion.PromotionConfig(alias="held", reason="holder"))
    assert holder.promoted, holder.gates
    assert models.load_decoder(models.resolve(f"{MODEL}/1")).evidence["val_neg_elbo"] == "40.000000"
    version = register_by_hand(tmp_path / "artifacts", other_weights)
    copied = models.load_decoder(models.resolve(f"{MODEL}/{version}"))
    assert copied.tags["val_neg_elbo"] == "40.000000" and copied.evidence == {}
    result = invoke("promote", f"{MODEL}/{version}", "--alias", "held", "--reason", "copied tags")
    assert result.exit_code == 1
    assert f"no held-out -ELBO sealed by vaegen for v{version}'s artifacts" in result.stdout, result.stdout
    # A report seals its own figures, and carries over only what was validly sealed before: never the copied ELBO.
    models.record_quality(copied, {"precision": 0.9})
    models.record_quality(models.load_decoder(models.resolve(f"{MODEL}/1")), {"precision": 0.8})
    assert models.load_decoder(models.resolve(f"{MODEL}/{version}")).evidence == {"quality.precision": "0.9"}
    assert models.load_decoder(models.resolve(f"{MODEL}/1")).evidence == {
        "val_neg_elbo": "40.000000",
        "quality.precision": "0.8",
    }


def test_the_seal_binds_artifacts_values_and_key(monkeypatch):
    tags = {"val_neg_elbo": "40.0", "data_sha256": "ab", "quality.precision": "0.9", "config": "{}"}
    tags[evidence.SEAL_TAG] = evidence.seal("digest", tags)
    assert evidence.sealed_evidence("digest", tags) == {
        key: tags[key] for key in ("val_neg_elbo", "data_sha256", "quality.precision")
    }
    assert evidence.sealed_evidence("other artifacts", tags) == {}
    assert evidence.sealed_evidence("digest", {**tags, "val_neg_elbo": "1.0"}) == {}
    assert evidence.sealed_evidence("digest", {**tags, "config": "edited: not evidence"}) != {}
    monkeypatch.setenv(evidence.KEY_ENV, "a deployment's secret")
    assert evidence.sealed_evidence("digest", tags) == {}  # an unkeyed seal is no seal once a key is set
    tags[evidence.SEAL_TAG] = evidence.seal("digest", tags)
    assert evidence.sealed_evidence("digest", tags)["val_neg_elbo"] == "40.0"


def limited_vaegen(*args: str, memory_bytes: int = 1 << 30) -> tuple[subprocess.CompletedProcess, float]:
    """`vaegen ARGS` in a real process whose address space is capped (RLIMIT_AS)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=cap
    )
    return process, time.perf_counter() - started


def write_manifest(folder: Path, **changes) -> Path:
    from fuzz_records import SPEC, valid_manifest

    record = valid_manifest()
    for key, value in changes.items():
        if key.startswith("spec."):
            record["spec"][key.removeprefix("spec.")] = value
        else:
            record[key] = value
    dataset = folder / SPEC.dataset_id
    dataset.mkdir(parents=True)
    (dataset / "_manifest.json").write_text(json.dumps(record))
    return dataset


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"format": "vaegen-dataset/2", "n": 10**12, "rows_per_shard": 1}, "makes 1,000,000,000,000 parts"),
        ({"spec.num_classes": 3 * 10**8, "spec.label_policy": "balanced"}, "num_classes must lie in [0, 32,768]"),
        (
            {"format": "vaegen-dataset/2", "labels": {"policy": "balanced", "classes": list(range(40_000))}},
            "labels.classes must be a list or object of at most 32,768 entries",
        ),
    ],
    ids=["format-2-n-1e12", "num-classes-3e8", "label-list-40000"],
)
def test_hand_edited_manifests_are_refused_in_one_line_within_a_memory_cap(tmp_path, changes, fragment):
    dataset = write_manifest(tmp_path, **changes)
    process, seconds = limited_vaegen("inspect", str(dataset))
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 1 and len(lines) == 1 and lines[0].startswith("vaegen: error: "), process.stderr[
        -2000:
    ]
    assert fragment in process.stdout + lines[0] and seconds < QUICK_S  # the summary and PROBLEM lines go to stdout


def test_code_is_accepted_only_byte_for_byte_as_installed_or_as_a_listed_release(tmp_path, monkeypatch):
    from registry import artifacts

    installed = artifacts.installed_code()
    sources = {artifacts.PYFUNC_FILE: ROOT / "registry" / "pyfunc_decoder.py"}
    sources.update({name: ROOT / name.removeprefix("code/") for name in installed if name.startswith("code/")})
    for name, source in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(source.read_bytes())
    files = sorted(sources)
    assert artifacts.code_problem(tmp_path, files) is None
    (tmp_path / "code/vae_core/seeds.py").write_bytes(sources["code/vae_core/seeds.py"].read_bytes() + b"\n")
    assert "code file code/vae_core/seeds.py differs from vaegen's own" in artifacts.code_problem(tmp_path, files)
    release = tmp_path / "released.json"  # an earlier release's seeds.py: that exact file is vaegen's own too
    digest = artifacts._sha256(tmp_path / "code/vae_core/seeds.py")
    release.write_text(json.dumps({"0.0.9": {"code/vae_core/seeds.py": digest}}))
    monkeypatch.setattr(artifacts, "RELEASED_CODE", release)
    artifacts.known_code.cache_clear()
    try:
        assert artifacts.code_problem(tmp_path, files) is None
        (tmp_path / "code/vae_core/helper.py").write_text("import os\n")
        assert "code file code/vae_core/helper.py is not one of vaegen's" in artifacts.code_problem(
            tmp_path, files + ["code/vae_core/helper.py"]
        )
    finally:
        artifacts.known_code.cache_clear()


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {
            "hidden_sizes": [32, 16],
            "latent_dim": 5,
            "num_classes": 3,
            "class_prior": [0.3, 0.3, 0.4],
            "prior_flow_layers": 3,
            "prior_flow_hidden": 7,
        },
        {
            "architecture": "conv",
            "conv_channels": [8, 16],
            "hidden_sizes": [20],
            "input_shape": [3, 28, 28],
            "prior_flow_layers": 2,
            "num_classes": 3,
            "class_prior": [0.3, 0.3, 0.4],
        },
        {"architecture": "conv", "conv_channels": [4], "hidden_sizes": [], "input_shape": [9, 7]},
    ],
    ids=["mlp", "mlp-conditional-flow", "conv-conditional-flow", "conv-odd-sides"],
)
def test_the_shapes_checked_before_loading_are_the_real_modules(fields):
    from vae_core.config import VAEConfig, decoder_state_shapes
    from vae_core.model import Decoder

    config = VAEConfig.from_dict(fields)
    real = {key: tuple(value.shape) for key, value in Decoder(config).state_dict().items()}
    assert decoder_state_shapes(config) == real


REGISTER_WITH_BYTECODE = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import register_untrained_decoder
from registry import models
pinned = register_untrained_decoder("bytecode-check")
print("REFUSAL", models.version_refusal(pinned))
"""


def test_a_version_logged_where_python_writes_bytecode_passes_its_own_gate(tmp_path):
    """A user's Python writes __pycache__ (PYTHONDONTWRITEBYTECODE unset): MLflow imports the model's code while
    logging it, and the .pyc it left among the artifacts made every fresh `vaegen train` refuse its own version."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONDONTWRITEBYTECODE" and not key.startswith("MLFLOW_")
    }
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(
        [sys.executable, "-c", REGISTER_WITH_BYTECODE, str(Path(__file__).parent)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSAL None" in done.stdout, done.stdout
    assert not list(tmp_path.rglob("*.pyc")), list(tmp_path.rglob("*.pyc"))
