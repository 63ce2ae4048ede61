"""MLflow lineage you can click (issue 12): what the MLflow UI reads about a version, its training
data, the datasets generated from it and its promotions, asserted through MLflow's client on a
real SQLite store (conftest.py), and through the REST API of a real `mlflow server` (the calls the
UI's pages make). Per-subject report folders too. Ray is a real local Ray (test_generate.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient

from helpers import assert_one_error_line, invoke
from jobs import report as reports
from jobs.generate.engine import EngineOptions
from jobs.generate.job import GenerateConfig, GenerateResult, generate
from jobs.train import TrainJobConfig, TrainJobResult, default_run_name, run
from registry import descriptions, lineage
from registry.promotion import PromotionConfig, promote, rollback
from vae_core import data as data_sources
from vae_core.errors import UsageError

NAME = "vae-lineage"
ANY_ELBO = 1e9  # gate 2 off in effect: these tiny models differ by seed, the test is about what gets recorded
RUN_NAME = re.compile(r"^train-digits-vae128-z2-\d{8}T\d{6}Z$")
DATASET_N, DATASET_SEED, DATASET_R = 2_000, 3, 1_000
PERSON_NOTE = "Reviewed by a person | keep this"


# ---------------------------------------------------------------- renderers and names, no MLflow


def event(version: int, previous: int | None, day: int, action: str = "promote") -> dict:
    return {
        "action": action,
        "alias": "champion",
        "version": version,
        "previous_version": previous,
        "at": f"2026-01-{day:02d}T00:00:00+00:00",
        "by": "alice",
        "reason": "retrained " + "x" * 80,
        "gates": [
            {"name": "loads", "passed": True, "detail": "ok"},
            {"name": "quality", "passed": False, "detail": "low"},
        ],
    }


def test_generated_text_is_replaced_and_a_persons_text_is_kept():
    first = descriptions.replace_generated(None, "generated once")
    assert first.startswith("generated once") and first.endswith(descriptions.GENERATED_END)
    edited = f"{first}\n\n{PERSON_NOTE}"
    second = descriptions.replace_generated(edited, "generated twice")
    assert second.startswith("generated twice") and "generated once" not in second and second.endswith(PERSON_NOTE)
    assert descriptions.replace_generated(second, "generated twice") == second
    # text written before vaegen ever rendered moves below the marker, intact
    legacy = descriptions.replace_generated("written by hand", "generated")
    assert legacy.index("generated") < legacy.index(descriptions.GENERATED_END) < legacy.index("written by hand")
    assert (
        descriptions.budget(second)
        == descriptions.DESCRIPTION_LIMIT - len(PERSON_NOTE) - len(descriptions.GENERATED_END) - 4
    )


def test_the_history_tag_fits_a_registered_model_tag_on_sql_stores():
    from registry.promotion import HISTORY_LIMIT, HISTORY_MAX_CHARS, _bounded_history

    gates = [{"name": f"gate{i}", "passed": True, "detail": "x" * 400, "forceable": False} for i in range(6)]
    events: list[dict] = []
    for version in range(1, 40):
        events = _bounded_history(
            events,
            {
                "action": "promote",
                "alias": "champion",
                "version": version,
                "previous_version": version - 1,
                "reason": "r" * 100,
                "gates": gates,
            },
        )
        assert len(json.dumps(events)) <= HISTORY_MAX_CHARS and len(events) <= HISTORY_LIMIT
    assert events[-1]["version"] == 39 and [event["version"] for event in events] == list(range(40 - len(events), 40))
    assert events[-1]["gates"] == [
        {"name": f"gate{i}", "passed": True} for i in range(6)
    ]  # verdicts; details stay on the version


def test_history_is_newest_first_and_fits_mlflows_description_limit():
    events = [event(version, version - 1 or None, version) for version in range(1, 26)]
    short = descriptions.history_description("m", {"champion": events[:2]})
    rows = [line for line in short.splitlines() if line.startswith("| 2026")]
    assert [row.split(" | ")[0] for row in rows] == ["| 2026-01-02T00:00:00+00:00", "| 2026-01-01T00:00:00+00:00"]
    assert "[v2](#/models/m/versions/2) | v1 |" in rows[0] and "[v1](#/models/m/versions/1) | - |" in rows[1]
    assert "PASS loads; FAIL quality" in rows[0] and "low" not in rows[0]  # verdicts here, details on the version
    same_second = [event(1, None, 9), event(2, 1, 9), event(1, 2, 9, "rollback")]  # recorded order breaks ties
    rows = [
        line
        for line in descriptions.history_description("m", {"champion": same_second}).splitlines()
        if "| 2026" in line
    ]
    assert [row.split(" | ")[1] for row in rows] == ["rollback", "promote", "promote"] and "[v2]" in rows[1]
    limited = descriptions.history_description("m", {"champion": events, "canary": events[:3]}, limit=2_000)
    assert len(limited) <= 2_000
    assert "2026-01-25" in limited and "2026-01-01" not in limited  # the newest kept, the oldest dropped
    assert re.search(r"\d+ older event\(s\) not shown here", limited)
    assert "`@canary`" in limited and "`@champion`" in limited


def test_version_description_of_a_bare_version_says_how_to_get_a_report():
    config = {"latent_dim": 16, "hidden_sizes": [512], "input_shape": [28, 28], "conditional": True, "num_classes": 10}
    text = descriptions.version_description("m", 3, {"config": json.dumps(config)}, {}, None)
    first = "Class-conditional (10 classes) VAE decoder (MLP, hidden 512), 28x28 samples, latent 16."
    assert text.splitlines()[0] == first
    assert "| sample shape | 28x28 |" in text and "no report yet (`vaegen report --model m/3`)" in text
    assert "logged model" not in text and "Promotions" not in text


def test_table_cells_escape_pipes_and_line_breaks():
    assert descriptions.cell("a|b\nc") == "a\\|b c"
    assert descriptions.table(("k", "v"), [("x|y", 1)]).splitlines()[-1] == "| x\\|y | 1 |"


@pytest.mark.parametrize(
    "data, expected",
    [
        ("digits", "train-digits-vae128-z2-20261130T101530Z"),
        ("mnist:/data/mnist/", "train-mnist-vae128-z2-20261130T101530Z"),
        ("npz:/tmp/x/faces.npz:images", "train-npz-faces-vae128-z2-20261130T101530Z"),
        ("parquet:s3://bucket/p/train.parquet:img", "train-parquet-train-vae128-z2-20261130T101530Z"),
    ],
)
def test_default_run_name_says_what_was_trained(data, expected):
    now = dt.datetime(2026, 11, 30, 10, 15, 30, tzinfo=dt.timezone.utc)
    assert default_run_name(TrainJobConfig(data=data), now) == expected
    conditional = TrainJobConfig(conditional=True, hidden_sizes=(512, 256), latent_dim=16)
    assert default_run_name(conditional, now) == "train-digits-cvae512x256-z16-20261130T101530Z"
    conv = TrainJobConfig.for_architecture("conv", data="mnist:/data/mnist", conditional=True)
    assert default_run_name(conv, now) == "train-mnist-cvae-conv32x64-z16-20261130T101530Z"


def test_report_folders_are_per_subject_and_never_take_anothers(tmp_path):
    config = reports.ReportConfig(root=str(tmp_path / "report"))
    folder = reports.report_folder(config, Path("m", "v1"), "model m/1")
    assert folder == tmp_path / "report" / "m" / "v1"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"subject": "model", "model": {"name": "m", "version": 1}}))
    assert reports.report_folder(config, Path("m", "v1"), "model m/1") == folder  # its own report: replaced
    with pytest.raises(UsageError, match=r"holds the report of model m/1, not model m/2; pass another --out"):
        reports.report_folder(reports.ReportConfig(out_dir=str(folder)), Path("m", "v2"), "model m/2")
    dataset = reports.report_folder(config, Path("datasets", "d1"), "dataset d1")
    assert dataset == tmp_path / "report" / "datasets" / "d1"
    assert reports.headline({"precision": 0.5, "coverage": 1, "frechet_distance": "n/a", "model": {}}) == {
        "precision": 0.5,
        "coverage": 1.0,
    }


# ---------------------------------------------------------------- a real SQLite store


@dataclasses.dataclass(frozen=True)
class Promoted:
    v1: TrainJobResult  # with its quality report; promoted to champion, then champion again after the rollback
    v2: TrainJobResult  # no report; promoted over v1, then rolled back
    root: Path  # the working folder (reports land under root/report)


def train(tiny_train_config, **overrides) -> TrainJobResult:
    return run(tiny_train_config(register_as=NAME, **overrides))


def logged_model_id(name: str, version: int) -> str:
    model_id = lineage.logged_model_id(MlflowClient().get_model_version(name, str(version)))
    assert model_id and model_id.startswith("m-")
    return model_id


@pytest.fixture(scope="module")
def promoted(module_sqlite, cache_root, tiny_train_config) -> Promoted:
    client = MlflowClient()
    v1 = train(tiny_train_config)
    description = client.get_model_version(NAME, "1").description
    client.update_model_version(NAME, "1", f"{description}\n\n{PERSON_NOTE}")  # as a person would, in the UI
    promote(f"{NAME}/1", PromotionConfig(reason="first champion", by="alice"))
    v2 = train(tiny_train_config, seed=1, report=False)
    promote(f"{NAME}/2", PromotionConfig(reason="retrained", by="bob", elbo_tolerance_nats=ANY_ELBO))
    rollback(NAME, "champion", by="carol", reason="v2 regressed")
    return Promoted(v1, v2, module_sqlite.root)


def test_training_run_has_a_readable_name_and_its_data_as_input(promoted):
    training_run = MlflowClient().get_run(promoted.v1.pinned.run_id)
    assert RUN_NAME.match(training_run.info.run_name), training_run.info.run_name
    [data] = training_run.inputs.dataset_inputs
    sha256 = data_sources.load("digits").content_sha256()
    assert (data.dataset.name, data.dataset.digest) == ("digits", sha256[: lineage.DIGEST_CHARS])
    assert data.dataset.source_type == "vaegen-data" and json.loads(data.dataset.source) == {"spec": "digits"}
    assert {(tag.key, tag.value) for tag in data.tags} == {("mlflow.data.context", "training")}
    assert (
        lineage.DataSpecSource.from_json(data.dataset.source).load().content_sha256() == sha256
    )  # loads the same data
    assert [output.model_id for output in training_run.outputs.model_outputs] == [logged_model_id(NAME, 1)]


def test_quality_figures_are_metrics_of_the_training_run_and_of_its_logged_model(promoted):
    client = MlflowClient()
    figures = reports.headline(promoted.v1.quality.metrics)
    assert len(figures) >= 4 and "precision" in figures
    metrics = client.get_run(promoted.v1.pinned.run_id).data.metrics
    tags = client.get_model_version(NAME, "1").tags
    for key, value in figures.items():
        assert metrics[f"quality.{key}"] == pytest.approx(value), key
        assert float(tags[f"vaegen.quality.{key}"]) == pytest.approx(value, rel=1e-5), (
            key
        )  # gate 3 still reads the tags
    # sortable and filterable like any metric: the UI's run table and search use these
    found = mlflow.search_runs(
        experiment_names=["vaegen-train"],
        order_by=["metrics.`quality.precision` DESC"],
        filter_string="attributes.run_name LIKE 'train-%' AND metrics.`quality.precision` >= 0",
    )
    assert list(found["run_id"]) == [promoted.v1.pinned.run_id]  # v2 has no report
    logged = {
        (metric.key, metric.dataset_name, metric.run_id): metric.value
        for metric in client.get_logged_model(logged_model_id(NAME, 1)).metrics
    }
    run_id = promoted.v1.pinned.run_id
    assert logged[("quality.precision", None, run_id)] == pytest.approx(figures["precision"])
    assert logged[("val_neg_elbo", "digits", run_id)] == pytest.approx(promoted.v1.val_neg_elbo)  # against its data


def test_version_description_summarises_data_config_loss_quality_and_gates(promoted):
    client = MlflowClient()
    version = client.get_model_version(NAME, "1")
    text, tags = version.description, version.tags
    first_line = text.splitlines()[0]
    assert first_line == (
        f"Unconditional VAE decoder (MLP, hidden 128), 8x8 samples, latent 2, trained on digits; "
        f"held-out -ELBO {promoted.v1.val_neg_elbo:.3f} nats."
    )
    assert f"`digits`, sha256 `{tags['vaegen.data_sha256'][:12]}…`" in text
    assert f"{int(tags['vaegen.train_size']):,} train / {int(tags['vaegen.holdout_size']):,} held out" in text
    assert "| sample shape | 8x8 |" in text and "| training budget | 2 epochs of 128, constant schedule |" in text
    training_run = client.get_run(promoted.v1.pinned.run_id)
    assert (
        f"[{training_run.info.run_name}](#/experiments/{training_run.info.experiment_id}/runs/{training_run.info.run_id})"
        in text
    )
    model_id = logged_model_id(NAME, 1)
    assert f"[{model_id}](#/experiments/{training_run.info.experiment_id}/models/{model_id})" in text
    precision = float(tags["vaegen.quality.precision"])
    assert f"| precision | {precision:.4g} |" in text
    # promoted by alice (gates with details), champion again after carol's rollback of v2
    promotion = json.loads(tags["vaegen.promotion.champion"])
    assert f"| promote | champion | alice | first champion | {descriptions.gates_text(promotion['gates'])} |" in text
    assert "PASS loads: weights-only load" in text
    assert text.endswith(PERSON_NOTE)  # a person's note survived three re-renderings
    assert text.count(descriptions.GENERATED_END) == 1
    second = client.get_model_version(NAME, "2").description
    assert (
        "| rollback | champion | carol | v2 regressed | - |" in second
        and "| promote | champion | bob | retrained |" in second
    )
    assert len(text) <= descriptions.DESCRIPTION_LIMIT


def test_registered_model_description_renders_the_history_tag(promoted):
    model = MlflowClient().get_registered_model(NAME)
    events = json.loads(model.tags["vaegen.history.champion"])  # kept: rollback reads it
    assert [(item["action"], item["version"], item["by"]) for item in events] == [
        ("promote", 1, "alice"),
        ("promote", 2, "bob"),
        ("rollback", 1, "carol"),
    ]
    rows = [line for line in model.description.splitlines() if line.startswith("| 20")]
    assert [row.split(" | ")[1:6] for row in rows] == [
        ["rollback", f"[v1]({descriptions.version_link(NAME, 1)})", "v2", "carol", "v2 regressed"],
        ["promote", f"[v2]({descriptions.version_link(NAME, 2)})", "v1", "bob", "retrained"],
        ["promote", f"[v1]({descriptions.version_link(NAME, 1)})", "-", "alice", "first champion"],
    ]
    assert "`@champion`" in model.description and model.description.endswith(descriptions.GENERATED_END)


def test_train_writes_its_report_to_the_versions_folder(promoted):
    assert promoted.v1.quality.json_path == Path("report", NAME, "v1", "report.json")
    assert json.loads((promoted.root / promoted.v1.quality.json_path).read_text())["model"]["version"] == 1


def test_report_of_another_version_into_a_taken_folder_is_refused(promoted):
    taken = promoted.root / "report" / NAME / "v1"
    before = (taken / "report.json").read_bytes()
    refused = invoke("report", "--model", f"{NAME}/2", "--n", "500", "--out", str(taken))
    assert_one_error_line(refused, 2, f"holds the report of model {NAME}/1, not model {NAME}/2")
    assert (taken / "report.json").read_bytes() == before
    default = invoke("report", "--model", f"{NAME}/2", "--n", "500")
    assert default.exit_code == 0, default.output
    assert f"report: report/{NAME}/v2/report.json" in default.stdout
    assert json.loads((promoted.root / "report" / NAME / "v2" / "report.json").read_text())["model"]["version"] == 2


def test_report_help_names_the_default_layout():
    help_text = " ".join(invoke("report", "--help").stdout.split())
    assert "report/<model>/v<version>/ for --model" in help_text
    assert "report/datasets/<dataset id>/ for --dataset" in help_text


# ---------------------------------------------------------------- a generated dataset (real Ray)


@dataclasses.dataclass(frozen=True)
class Generated:
    dataset: GenerateResult
    report: reports.ReportResult


@pytest.fixture(scope="module")
def generated(promoted, local_ray_module, tmp_path_factory) -> Generated:
    local_ray_module.ensure()
    config = GenerateConfig(
        n=DATASET_N,
        model=f"{NAME}@champion",
        out=str(tmp_path_factory.mktemp("datasets")),
        seed=DATASET_SEED,
        rows_per_shard=DATASET_R,
        engine=EngineOptions(num_workers=1),
    )
    dataset = generate(config)
    return Generated(dataset, reports.dataset_report(dataset.location, reports.ReportConfig(n=DATASET_N)))


@pytest.mark.slow
def test_dataset_run_sits_with_its_model_and_links_it_both_ways(promoted, generated):
    client = MlflowClient()
    record = generated.dataset.manifest
    dataset_run = client.get_run(record["lineage"]["run_id"])
    training_run = client.get_run(promoted.v1.pinned.run_id)
    model_id = logged_model_id(NAME, 1)
    # the run page lists a run's linked models only from its own experiment: the dataset run is filed there
    assert dataset_run.info.experiment_id == training_run.info.experiment_id
    assert record["lineage"]["experiment"] == "vaegen-train" and dataset_run.info.run_name == record["dataset_id"]
    assert [item.model_id for item in dataset_run.inputs.model_inputs] == [model_id]
    [data] = dataset_run.inputs.dataset_inputs
    assert (data.dataset.name, data.dataset.digest) == (record["dataset_id"], record["spec_fingerprint"])
    assert {(tag.key, tag.value) for tag in data.tags} == {("mlflow.data.context", "generated")}
    tags = dataset_run.data.tags
    assert (tags["vaegen.model_name"], tags["vaegen.model_version"]) == (NAME, "1")
    note = tags["mlflow.note.content"]
    assert f"[{NAME} v1]({descriptions.version_link(NAME, 1)}) (resolved from `{NAME}@champion`)" in note
    assert f"#/experiments/{training_run.info.experiment_id}/models/{model_id}" in note
    assert f"[{training_run.info.run_name}](#/experiments/{training_run.info.experiment_id}/runs/" in note
    assert f"`{generated.dataset.location}`" in note and f"{DATASET_N:,} in 2 part(s)" in note
    # back from the model: its metrics name the dataset and the run (the logged model page's "Datasets used", "Runs")
    back = {
        (metric.key, metric.dataset_name, metric.dataset_digest)
        for metric in client.get_logged_model(model_id).metrics
        if metric.run_id == dataset_run.info.run_id
    }
    assert ("rows_per_s", record["dataset_id"], record["spec_fingerprint"]) in back
    assert ("quality.precision", record["dataset_id"], record["spec_fingerprint"]) in back


@pytest.mark.slow
def test_dataset_report_goes_to_the_datasets_folder_and_its_figures_are_run_metrics(promoted, generated):
    record = generated.dataset.manifest
    assert generated.report.json_path == Path("report", "datasets", record["dataset_id"], "report.json")
    assert (promoted.root / generated.report.json_path).is_file()
    metrics = MlflowClient().get_run(record["lineage"]["run_id"]).data.metrics
    figures = reports.headline(generated.report.metrics)
    assert figures and all(metrics[f"quality.{key}"] == pytest.approx(value) for key, value in figures.items())


# ---------------------------------------------------------------- the same facts over REST, from a real `mlflow server`


def rest(uri: str, path: str, **params) -> dict:
    response = requests.get(f"{uri}/api/2.0/mlflow/{path}", params=params, timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.mark.slow
def test_the_ui_reads_the_links_from_a_real_server(mlflow_http, cache_root, tiny_train_config, local_ray, tmp_path):
    name, uri = "vae-lineage-http", mlflow_http.uri
    trained = run(tiny_train_config(register_as=name))
    promote(f"{name}/1", PromotionConfig(reason="served over http", by="dora"))
    dataset = generate(
        GenerateConfig(
            n=DATASET_N,
            model=f"{name}@champion",
            out=str(tmp_path / "datasets"),
            seed=DATASET_SEED,
            rows_per_shard=DATASET_R,
            engine=EngineOptions(num_workers=1),
        )
    )
    model_id = logged_model_id(name, 1)

    # the training run page: data input with its context and digest, quality metrics
    training = rest(uri, "runs/get", run_id=trained.pinned.run_id)["run"]
    assert RUN_NAME.match(training["info"]["run_name"])
    [data] = training["inputs"]["dataset_inputs"]
    assert data["dataset"]["name"] == "digits" and data["tags"] == [{"key": "mlflow.data.context", "value": "training"}]
    latest = {metric["key"]: metric["value"] for metric in training["data"]["metrics"]}
    assert latest["quality.precision"] == pytest.approx(trained.quality.metrics.precision)

    # the version page: the description, and the logged model the UI's "Source Model" parses from the source
    version = rest(uri, "model-versions/get", name=name, version="1")["model_version"]
    assert version["source"] == f"models:/{model_id}"
    assert "held-out -ELBO" in version["description"]
    assert "| promote | champion | dora | served over http | PASS safe_artifacts: " in version["description"]
    assert "PASS loads: " in version["description"]
    registered = rest(uri, "registered-models/get", name=name)["registered_model"]
    assert (
        "| promote | [v1](#/models/vae-lineage-http/versions/1) | - | dora | served over http |"
        in registered["description"]
    )

    # the dataset run page: the run page searches logged models in the run's own experiment, as here
    dataset_run = rest(uri, "runs/get", run_id=dataset.manifest["lineage"]["run_id"])["run"]
    assert dataset_run["info"]["experiment_id"] == training["info"]["experiment_id"]
    assert dataset_run["inputs"]["model_inputs"] == [{"model_id": model_id}]
    search = requests.post(
        f"{uri}/api/2.0/mlflow/logged-models/search",
        timeout=30,
        json={
            "experiment_ids": [dataset_run["info"]["experiment_id"]],
            "filter": f"attributes.model_id IN ('{model_id}')",
        },
    )
    search.raise_for_status()
    assert [model["info"]["model_id"] for model in search.json()["models"]] == [model_id]

    # the logged model page: metrics naming the dataset and the dataset run ("Datasets used", "Runs")
    logged = requests.get(f"{uri}/api/2.0/mlflow/logged-models/{model_id}", timeout=30)
    logged.raise_for_status()
    pairs = {(metric.get("dataset_name"), metric["run_id"]) for metric in logged.json()["model"]["data"]["metrics"]}
    assert (dataset.manifest["dataset_id"], dataset_run["info"]["run_id"]) in pairs
    assert ("digits", trained.pinned.run_id) in pairs
