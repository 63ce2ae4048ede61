"""The promotion gate refuses any version whose artifacts would make MLflow unpickle, and --force
never overrides it (issue 16's `vae-decoder@evil` probe), against a real SQLite MLflow registry.

The probe's version is built as an attacker would: the real weights.npz and config.json of a
trained version, plus a python_model.pkl whose `__reduce__` writes a marker file, and an MLmodel
whose pyfunc loader unpickles it. A subprocess shows that MLflow's generic loader really runs
the payload (MLflow 3.17 allows pickle by default), so the gate's refusal is not vacuous."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import invoke
from registry import gates, promotion
from registry.models import MODEL_ARTIFACT, TAG_PREFIX, resolve

MODEL_NAME = "vae-decoder"
COPIED_TAGS = ("config", "val_neg_elbo", "latent_dim", "conditional", "data_sha256", "holdout_fraction")


class Payload:
    """Unpickling this runs `exec`: it writes `marker`. Pickled by value (builtins.exec + a string)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def register_doctored(trained_version, folder: Path, doctor: Callable[[Path], None]) -> int:
    """A new version of vae-decoder: the trained version's artifacts, changed by `doctor`, with its vaegen tags
    (but no quality report), registered the way anyone with write access to the registry could."""
    client = mlflow.MlflowClient()
    good = trained_version.result.pinned
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=good.uri, dst_path=str(folder)))
    doctor(local)
    experiment = client.get_experiment_by_name("vaegen-train").experiment_id
    run = client.create_run(experiment, run_name="doctored")
    client.log_artifacts(run.info.run_id, str(local), MODEL_ARTIFACT)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        MODEL_NAME, f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run.info.run_id
    )
    tags = client.get_model_version(MODEL_NAME, str(good.version)).tags
    for key in COPIED_TAGS:
        client.set_model_version_tag(MODEL_NAME, version.version, TAG_PREFIX + key, tags[TAG_PREFIX + key])
    return int(version.version)


def edit_mlmodel(local: Path, change: Callable[[dict], None]) -> None:
    path = local / "MLmodel"
    model = yaml.safe_load(path.read_text())
    change(model)
    path.write_text(yaml.safe_dump(model))


def cloudpickle_loader(marker: Path) -> Callable[[Path], None]:
    """The probe: python_model.pkl with a payload, and a pyfunc flavor that loads it with cloudpickle."""

    def doctor(local: Path) -> None:
        (local / "python_model.pkl").write_bytes(pickle.dumps(Payload(marker)))

        def pickled(model: dict) -> None:
            flavor = model["flavors"]["python_function"]
            del flavor["model_code_path"]
            flavor["loader_module"] = "mlflow.pyfunc.model"
            flavor["python_model"] = "python_model.pkl"

        edit_mlmodel(local, pickled)

    return doctor


def load_generically(
    version: int, tracking_uri: str, cwd: Path, allow_pickle: str | None
) -> subprocess.CompletedProcess:
    """`mlflow.pyfunc.load_model("models:/vae-decoder/N")`, the README's generic path, in a fresh process."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if allow_pickle is not None:
        env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = allow_pickle
    script = f"import mlflow; mlflow.pyfunc.load_model('models:/{MODEL_NAME}/{version}')"
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def evil(trained_version, tmp_path_factory) -> tuple[int, Path]:
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "PAYLOAD-RAN"
    return register_doctored(trained_version, folder / "artifacts", cloudpickle_loader(marker)), marker


def test_a_trained_version_passes_the_safety_gate(trained_version):
    gate = gates.gate_artifacts(trained_version.result.pinned)
    assert gate.passed and not gate.forceable, gate


def test_the_gate_refuses_a_pickled_pyfunc_even_with_force_and_nothing_runs(trained_version, evil):
    version, marker = evil
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, "staging-evil", str(version))  # as the probe's `vae-decoder@evil`
    result = invoke("promote", f"{MODEL_NAME}@staging-evil", "--alias", "evil", "--reason", "probe", "--force")
    assert result.exit_code == 1, result.output
    assert (
        "gate safe_artifacts FAIL  refused: pyfunc python_model 'python_model.pkl' is a cloudpickle file, not code"
        in result.stdout
    ), result.stdout
    assert "not promoted: vae-decoder@evil stays unset" in result.stderr
    assert "evil" not in client.get_registered_model(MODEL_NAME).aliases
    assert not marker.exists()  # neither the gate nor anything else unpickled the payload


def test_the_payload_is_real_and_pickle_off_stops_it(trained_version, evil, tmp_path):
    version, marker = evil
    refused = load_generically(version, trained_version.store.uri, tmp_path, allow_pickle="false")
    assert refused.returncode != 0 and "Deserializing model using pickle is disallowed" in refused.stderr
    assert not marker.exists()
    loaded = load_generically(version, trained_version.store.uri, tmp_path, allow_pickle=None)  # MLflow 3.17's default
    assert marker.read_text() == "payload ran", loaded.stderr[-2000:]
    marker.unlink()


def extra_file(relative: str) -> Callable[[Path], None]:
    def doctor(local: Path) -> None:
        (local / relative).write_bytes(pickle.dumps({"weights": [1, 2, 3]}))

    return doctor


def another_flavor(local: Path) -> None:
    edit_mlmodel(
        local, lambda model: model["flavors"].update(pytorch={"model_data": "data", "pickle_module_name": "pickle"})
    )


def other_artifacts(local: Path) -> None:
    def change(model: dict) -> None:
        model["flavors"]["python_function"]["artifacts"]["weights"]["path"] = "artifacts/weights.pt"

    (local / "artifacts" / "weights.npz").rename(local / "artifacts" / "weights.pt")
    edit_mlmodel(local, change)


@pytest.mark.parametrize(
    ("doctor", "fragment"),
    [
        (extra_file("artifacts/model.pkl"), "unexpected artifact(s) artifacts/model.pkl"),
        (extra_file("code/vae_core/helper.pkl"), "unexpected artifact(s) code/vae_core/helper.pkl"),
        (another_flavor, "flavors ['python_function', 'pytorch'], not only python_function"),
        (other_artifacts, "pyfunc artifacts"),
        (
            lambda local: (local / "MLmodel").write_text("flavors: !!python/object/apply:os.system ['true']\n"),
            "MLmodel is not plain YAML",
        ),
    ],
    ids=["pkl-artifact", "pkl-in-code", "pytorch-flavor", "weights-pt", "yaml-tag"],
)
def test_the_gate_allows_only_vaegens_own_files(trained_version, tmp_path, doctor, fragment):
    version = register_doctored(trained_version, tmp_path, doctor)
    gate = gates.gate_artifacts(resolve(f"{MODEL_NAME}/{version}"))
    assert not gate.passed and not gate.forceable and fragment in gate.detail, gate
    result = promotion.promote(
        f"{MODEL_NAME}/{version}", promotion.PromotionConfig(alias=f"probe{version}", reason="probe", force=True)
    )
    assert not result.promoted and [g.name for g in result.gates] == ["safe_artifacts"]


def test_force_overrides_only_a_comparison_with_nothing_to_compare(trained_version, tmp_path):
    version = register_doctored(trained_version, tmp_path, lambda local: None)  # clean files, no quality report
    thresholds = gates.QualityThresholds()
    blocked = promotion.promote(
        f"{MODEL_NAME}/{version}", promotion.PromotionConfig(alias="forced", reason="x", quality=thresholds)
    )
    quality = next(gate for gate in blocked.gates if gate.name == "quality")
    assert not blocked.promoted and not quality.passed and quality.forceable
    forced = promotion.promote(
        f"{MODEL_NAME}/{version}", promotion.PromotionConfig(alias="forced", reason="x", quality=thresholds, force=True)
    )
    names = ["safe_artifacts", "loads", "schema", "held_out_elbo", "quality"]
    assert forced.promoted and [gate.name for gate in forced.gates] == names
