"""Offline checks of deploy/: the image recipe, the Compose stack, the Kubernetes manifests, the runbook.

Nothing here needs Docker, a cluster or the network. The Kubernetes core objects are validated
against the JSON schemas that ship with `kubernetes_validate`; the KubeRay custom resources against
the CRDs of ray-project/kuberay in ../shared/kuberay-crds/, strictly (tests/crd_schema.py: a field
the CRD does not declare is an error), and the pod templates inside them as core PodTemplates too.
The vaegen command lines found in the manifests and in the runbook's code blocks are checked
against the real CLI's `--help`. The CronJob's submit script runs against a real Ray in
tests/test_deploy_refresh.py.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from crd_schema import CrdSchemas  # tests/ is on sys.path (rootdir conftest)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
RUNBOOK = DEPLOY / "RUNBOOK.md"
ENV_EXAMPLE = DEPLOY / ".env.example"
COMPOSE = DEPLOY / "compose.yaml"

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
COMPOSE_FILES = sorted(DEPLOY.glob("compose*.yaml"))
K8S_FILES = sorted(K8S.glob("*.yaml"))
NAMESPACE = "vaegen"
RAY_API = "ray.io/v1"
RAY_KINDS = {"RayCluster", "RayJob", "RayCronJob"}
MONITORING_API = "monitoring.coreos.com/v1"  # the Prometheus Operator's PodMonitor: no schema in kubernetes_validate
GRAFANA = DEPLOY / "grafana"
LOOPBACK_DEFAULT = "${BIND_ADDRESS:-127.0.0.1}"
# The oldest Kubernetes minor we support (CronJob timeZone is GA since 1.27) and the newest
# one kubernetes_validate ships schemas for.
K8S_VERSIONS = ("1.29", ".".join(kubernetes_validate.latest_version().split(".")[:2]))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def load_docs(path: Path) -> tuple[dict[str, Any], ...]:
    with path.open() as handle:
        return tuple(doc for doc in yaml.safe_load_all(handle) if doc is not None)


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in K8S_FILES for doc in load_docs(path)]


def objects_of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_objects() if doc["kind"] == kind]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in objects_of_kind(kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected exactly one {kind}" + (f" named {name}" if name else "") + f", found {len(found)}"
    )
    return found[0]


def kuberay_crd_dir() -> Path | None:
    """VAEGEN_KUBERAY_CRDS, else ../shared/kuberay-crds beside the repository, else /work/shared/kuberay-crds."""
    if os.environ.get("VAEGEN_KUBERAY_CRDS"):
        return Path(os.environ["VAEGEN_KUBERAY_CRDS"])
    for candidate in (ROOT.parent / "shared" / "kuberay-crds", Path("/work/shared/kuberay-crds")):
        if candidate.is_dir():
            return candidate
    return None


@lru_cache(maxsize=1)
def kuberay_crds() -> CrdSchemas:
    directory = kuberay_crd_dir()
    if directory is None or not any(directory.glob("*.yaml")):
        pytest.skip(
            f"no KubeRay CRDs: set VAEGEN_KUBERAY_CRDS or provide {ROOT.parent / 'shared' / 'kuberay-crds'} "
            "(ray-project/kuberay ray-operator/config/crd/bases/*.yaml)"
        )
    return CrdSchemas(directory)


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every RayCluster spec: the long-lived cluster and those embedded in RayJob / RayCronJob."""
    specs = [(f"RayCluster/{d['metadata']['name']}", d["spec"]) for d in objects_of_kind("RayCluster")]
    specs += [(f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in objects_of_kind("RayJob")]
    specs += [
        (f"RayCronJob/{d['metadata']['name']}", d["spec"]["jobTemplate"]["rayClusterSpec"])
        for d in objects_of_kind("RayCronJob")
    ]
    return specs


def ray_job_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every RayJob spec: the RayJob's and the RayCronJob's job template."""
    specs = [(f"RayJob/{d['metadata']['name']}", d["spec"]) for d in objects_of_kind("RayJob")]
    specs += [(f"RayCronJob/{d['metadata']['name']}", d["spec"]["jobTemplate"]) for d in objects_of_kind("RayCronJob")]
    return specs


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template in the Kubernetes manifests."""
    for doc in objects_of_kind("Deployment"):
        yield f"Deployment/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
    for doc in objects_of_kind("CronJob"):
        yield f"CronJob/{doc['metadata']['name']}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for where, spec in ray_cluster_specs():
        yield f"{where} head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec["workerGroupSpecs"]:
            yield f"{where} {group['groupName']}", group["template"]["spec"]
    for where, spec in ray_job_specs():
        if "submitterPodTemplate" in spec:
            yield f"{where} submitter", spec["submitterPodTemplate"]["spec"]


def all_pod_specs_in(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping with `containers` anywhere in a tree: pod specs wherever a kind nests them."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for key, value in node.items():
            yield from all_pod_specs_in(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from all_pod_specs_in(item, f"{where}[{index}]")


def collect(build, default):
    """Build a parametrization list at collection time; a broken file fails its own tests, not collection."""
    try:
        return build()
    except Exception:  # noqa: BLE001 - test_yaml_parses and the structural tests report the cause
        return default


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    (doc,) = load_docs(path)
    return doc


# --------------------------------------------------------------------------------------------
# Every file
# --------------------------------------------------------------------------------------------


def test_deploy_files_exist() -> None:
    expected = [
        "Dockerfile",
        "compose.yaml",
        ".env.example",
        "RUNBOOK.md",
        "k8s/namespace.yaml",
        "k8s/mlflow.yaml",
        "k8s/raycluster.yaml",
        "k8s/rayjob-generate.yaml",
        "k8s/raycronjob-refresh.yaml",
        "k8s/cronjob-refresh.yaml",
        "k8s/webhook.yaml",
        "k8s/podmonitor.yaml",
        "grafana/prometheus-scrape.yaml",
        "grafana/vaegen-dashboard.json",
    ]
    missing = [name for name in expected if not (DEPLOY / name).is_file()]
    assert not missing, f"missing under deploy/: {missing}"


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{rel(path)} holds no document"
    assert all(isinstance(doc, dict) for doc in docs), f"{rel(path)}: every document must be a mapping"


@pytest.mark.parametrize("path", [*YAML_FILES, DOCKERFILE], ids=rel)
def test_manifest_starts_with_the_command_that_applies_it(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    if path == DOCKERFILE:
        expected = "# Build: docker build -f deploy/Dockerfile "
        assert first.startswith(expected), f"{rel(path)}: first line must start with {expected!r}"
    elif path.parent == GRAFANA:
        assert first.startswith("# Use: "), f"{rel(path)}: first line must say how to use it, is {first!r}"
    elif path.parent == K8S:
        expected = f"# Apply: kubectl apply -f {rel(path)}"
        assert first == expected, f"{rel(path)}: first line must be {expected!r}, is {first!r}"
    else:
        assert first.startswith("# Apply: docker compose "), f"{rel(path)}: first line {first!r}"
        assert f"-f {rel(path)}" in first, f"{rel(path)}: the header command must name the file itself"


# --------------------------------------------------------------------------------------------
# Kubernetes: core objects against the official schemas, KubeRay objects field by field
# --------------------------------------------------------------------------------------------

CORE_OBJECTS = collect(
    lambda: [(path, doc) for path, doc in k8s_objects() if doc["apiVersion"] not in (RAY_API, MONITORING_API)], []
)


def assert_valid(doc: dict[str, Any], version: str, what: str) -> None:
    """Validate against the Kubernetes schema of `version`; fail naming the object and the field."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        location = ".".join(str(part) for part in error.path)
        pytest.fail(f"{what}: {location}: {error.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("path", "doc"), CORE_OBJECTS, ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in CORE_OBJECTS]
)
def test_core_objects_validate_against_kubernetes_schema(path: Path, doc: dict[str, Any], version: str) -> None:
    assert_valid(doc, version, f"{path.name} {doc['kind']}/{doc['metadata']['name']} (k8s {version})")


def test_only_known_kinds_and_everything_in_the_vaegen_namespace() -> None:
    core = {"Namespace", "Secret", "ConfigMap", "Deployment", "Service", "CronJob"}
    for path, doc in k8s_objects():
        assert doc["kind"] in core | RAY_KINDS | {"PodMonitor"}, f"{path.name}: unexpected kind {doc['kind']}"
        if doc["apiVersion"].startswith("ray.io"):
            assert doc["apiVersion"] == RAY_API, f"{path.name}: KubeRay objects use {RAY_API}"
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name} {doc['kind']}: namespace"
    assert one("Namespace")["metadata"]["name"] == NAMESPACE


@pytest.mark.parametrize("version", K8S_VERSIONS[-1:])
def test_pod_templates_inside_kuberay_objects_validate(version: str) -> None:
    for where, spec in ray_cluster_specs():
        templates = [("head", spec["headGroupSpec"]["template"])]
        templates += [(group["groupName"], group["template"]) for group in spec["workerGroupSpecs"]]
        for name, template in templates:
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
            assert_valid(wrapped, version, f"{where} {name} pod template")
    submitters = [(where, spec["submitterPodTemplate"]) for where, spec in ray_job_specs()]
    assert len(submitters) == 2, "the RayJob and the RayCronJob set their submitter pod (env, non-root)"
    for where, template in submitters:
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "submitter"}, "template": template}
        assert_valid(wrapped, version, f"{where} submitter pod template")
        assert template["spec"]["restartPolicy"] == "Never", f"{where}: a Job's pod template must not restart Always"
        assert "command" not in template["spec"]["containers"][0], f"{where}: KubeRay fills in the submit command"


def test_prometheus_scrapes_the_metrics_port_of_every_ray_pod() -> None:
    """The PodMonitor (Prometheus Operator) and the plain scrape config select the RayCluster's pods by KubeRay's
    ray.io/cluster label and name a container port that the head and every worker group declare."""
    cluster = one("RayCluster")
    monitor = one("PodMonitor")
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    templates = [cluster["spec"]["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["spec"]["workerGroupSpecs"]]
    for template in templates:
        ports = {port["name"]: port["containerPort"] for port in template["spec"]["containers"][0]["ports"]}
        assert ports.get(endpoint["port"]) == 8080, ports  # KubeRay's --metrics-export-port
    (job,) = load_docs(GRAFANA / "prometheus-scrape.yaml")[0]["scrape_configs"]
    keep = {rule["source_labels"][0]: rule["regex"] for rule in job["relabel_configs"] if rule.get("action") == "keep"}
    assert keep == {
        "__meta_kubernetes_pod_label_ray_io_cluster": cluster["metadata"]["name"],
        "__meta_kubernetes_pod_container_port_name": endpoint["port"],
    }
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": [NAMESPACE]}}]


KUBERAY_OBJECTS = collect(lambda: [(path, doc) for path, doc in k8s_objects() if doc["apiVersion"] == RAY_API], [])


@pytest.mark.parametrize(
    ("path", "doc"), KUBERAY_OBJECTS, ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in KUBERAY_OBJECTS]
)
def test_kuberay_objects_validate_strictly_against_the_crds(path: Path, doc: dict[str, Any]) -> None:
    errors = kuberay_crds().errors(doc)
    assert not errors, (
        f"{path.name} {doc['kind']}/{doc['metadata']['name']} against {kuberay_crds().directory}:\n" + "\n".join(errors)
    )


def _rayjob_copy() -> dict[str, Any]:
    return copy.deepcopy(one("RayJob"))


def test_strict_crd_validation_rejects_unknown_fields_at_any_depth() -> None:
    crds = kuberay_crds()
    assert not crds.errors(_rayjob_copy())
    top = _rayjob_copy()
    top["spec"]["backoffLimitt"] = 1  # a typo the API server would prune without a word
    deep = _rayjob_copy()
    deep["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFromm"] = []
    meta = _rayjob_copy()
    meta["metadata"]["lables"] = {"a": "b"}
    empty_object = _rayjob_copy()  # rayStartParams is a map of strings; autoscalerOptions lists its fields
    empty_object["spec"]["rayClusterSpec"]["autoscalerOptions"]["idleTimeout"] = 300
    for name, doc, field in [
        ("top", top, "backoffLimitt"),
        ("deep", deep, "envFromm"),
        ("metadata", meta, "lables"),
        ("autoscalerOptions", empty_object, "idleTimeout"),
    ]:
        errors = crds.errors(doc)
        assert len(errors) == 1 and field in errors[0] and "not allowed" in errors[0], f"{name}: {errors}"


def test_strict_crd_validation_rejects_wrong_types_and_reads_kubernetes_extensions() -> None:
    crds = kuberay_crds()
    cases = {
        "integer as string": (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "replicas"], "0"),
        "int32 overflow": (["spec", "ttlSecondsAfterFinished"], 2**31),
        "string as list": (["spec", "entrypoint"], ["generate"]),
        "enum": (["spec", "rayClusterSpec", "autoscalerOptions", "upscalingMode"], "Eager"),
        "int-or-string as list": (
            [
                "spec",
                "rayClusterSpec",
                "headGroupSpec",
                "template",
                "spec",
                "containers",
                0,
                "resources",
                "limits",
                "cpu",
            ],
            ["2"],
        ),
        "null where not nullable": (["spec", "activeDeadlineSeconds"], None),
        "CEL rule (not evaluated offline)": (["spec", "managedBy"], "someone-else"),
    }
    for name, (path, value) in cases.items():
        doc = _rayjob_copy()
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        where = ".".join(map(str, path))
        errors = crds.errors(doc)
        assert errors and all(error.startswith(f"{where}:") for error in errors), (
            f"{name}: {where} = {value!r}: {errors}"
        )
    # int-or-string takes both forms, as the API server does.
    for value in (2, "2", "1500m"):
        doc = _rayjob_copy()
        doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "cpu"
        ] = value
        assert not crds.errors(doc), f"cpu {value!r}: {crds.errors(doc)}"
    # A list of type map keyed by name: two containers with one name is an error.
    doc = _rayjob_copy()
    containers = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    containers.append(copy.deepcopy(containers[0]))
    assert any("duplicate" in error for error in crds.errors(doc)), crds.errors(doc)


def test_crd_versions_gate_the_fields_the_headers_name() -> None:
    """What the headers claim, seen through the CRDs: timeZone exists (1.7+), backoffLimit is not used (1.2+)."""
    cron = copy.deepcopy(one("RayCronJob"))
    assert "timeZone" not in cron["spec"], "timeZone needs KubeRay 1.7; the header promises 1.6"
    cron["spec"]["timeZone"] = "Etc/UTC"
    assert not kuberay_crds().errors(cron), "the CRDs in use predate KubeRay 1.7 (no RayCronJob timeZone)"
    for where, spec in ray_job_specs():
        assert "backoffLimit" not in spec, f"{where}: RayJob backoffLimit needs KubeRay 1.2; the header promises 1.1"
    assert "KubeRay >= 1.1" in (K8S / "rayjob-generate.yaml").read_text()
    cron_header = (K8S / "raycronjob-refresh.yaml").read_text()
    for fact in (
        "KubeRay >= 1.6",
        "feature gate `RayCronJob`",
        "OFF by",
        "--feature-gates=RayCronJob=true",
        "startingDeadlineSeconds",
        "concurrencyPolicy",
        "one RayJob per missed tick",
    ):
        assert fact in cron_header, f"raycronjob-refresh.yaml header must say {fact!r}"


def test_every_kuberay_kind_is_present() -> None:
    assert sorted(where.split("/")[0] for where, _ in ray_cluster_specs()) == ["RayCluster", "RayCronJob", "RayJob"]


@pytest.mark.parametrize("where_spec", collect(ray_cluster_specs, []), ids=lambda item: item[0])
def test_ray_clusters_have_a_cpu_head_and_an_autoscaled_gpu_worker_group(where_spec) -> None:
    where, spec = where_spec
    assert spec["enableInTreeAutoscaling"] is True, where
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(spec["rayVersion"])), where
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in head.get("resources", {}).get(section, {}), f"{where}: the head is CPU only"
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if str(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")) == "1"
    ]
    assert gpu_groups, f"{where}: no worker group with limits nvidia.com/gpu: 1"
    for group in gpu_groups:
        assert group["minReplicas"] == 0, f"{where}: the GPU group must scale to zero"
        assert group["maxReplicas"] >= 1, where
        assert 0 <= group["replicas"] <= group["maxReplicas"], where


def test_rayjob_runs_generate() -> None:
    job = one("RayJob")["spec"]
    entrypoint = job["entrypoint"].split()
    assert entrypoint[0] == "generate", job["entrypoint"]
    assert entrypoint[entrypoint.index("--n") + 1] == "1000000"
    assert entrypoint[entrypoint.index("--out") + 1].startswith("s3://")
    assert "--device" in entrypoint, "GPU tasks must be requested explicitly for the autoscaler to add GPU workers"
    assert job["shutdownAfterJobFinishes"] is True


def test_raycronjob_runs_vaegen_refresh() -> None:
    cron = one("RayCronJob")["spec"]
    assert len(cron["schedule"].split()) == 5, cron["schedule"]
    template = cron["jobTemplate"]  # KubeRay 1.6: the RayJob spec itself, no `spec:` wrapper
    assert "spec" not in template and "rayClusterSpec" in template
    assert template["entrypoint"].split()[:2] == ["vaegen", "refresh"]
    assert template["entrypoint"].split()[template["entrypoint"].split().index("--out") + 1].startswith("s3://")


def _cronjob_container() -> dict[str, Any]:
    return one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def _cronjob_script() -> str:
    command = _cronjob_container()["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 4, "command: [sh, -c, SCRIPT, NAME]; args: the Ray job"
    return command[2]


def test_cronjob_submits_refresh_to_the_raycluster_head_service() -> None:
    cron = one("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = _cronjob_container()
    assert container["args"][:2] == ["vaegen", "refresh"], container["args"]
    env = {var["name"]: var for var in container["env"]}
    cluster = one("RayCluster")["metadata"]
    assert (
        env["RAY_ADDRESS"]["value"]
        == f"http://{cluster['name']}-head-svc.{cluster['namespace']}.svc.cluster.local:8265"
    )
    assert "--address" not in _cronjob_script(), "every ray command reads RAY_ADDRESS"


def test_cronjob_script_is_valid_posix_shell() -> None:
    done = subprocess.run(["sh", "-n", "-c", _cronjob_script()], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "$$" not in _cronjob_script() and not re.search(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", _cronjob_script()), (
        "Kubernetes rewrites $$ and $(NAME) in command and args"
    )


def test_cronjob_submission_id_comes_from_the_job_through_the_downward_api() -> None:
    env = {var["name"]: var for var in _cronjob_container()["env"]}
    labels = {"JOB_NAME": "batch.kubernetes.io/job-name", "JOB_UID": "batch.kubernetes.io/controller-uid"}
    for name, label in labels.items():
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{label}']", env[name]
    script = _cronjob_script()
    assert re.search(r'^\s*id="\$JOB_NAME-\$\{JOB_UID%%-\*\}"$', script, re.M), "id = job name + first uid block"
    submit = script.index("ray job submit")
    assert script.index("ray job status") < submit, "status check first"
    assert re.search(r'ray job submit [^\n]*--no-wait --submission-id "\$id" -- ', script)
    assert script.count("ray job submit") == 1
    # A Ray job that exists is followed, never submitted again; the outcome decides the exit code.
    assert re.search(r'if \[ -z "\$state" \]; then\n\s+echo "submitting', script)
    assert re.search(r"ray job logs [^\n]*--follow \"\$id\"", script)
    assert re.search(r"SUCCEEDED\)[^\n]*exit 0", script) and re.search(r"FAILED \| STOPPED\)[^\n]*exit 3", script)


def test_cronjob_deadline_stops_the_ray_job_before_the_pod_deadline() -> None:
    job = one("CronJob")["spec"]["jobTemplate"]["spec"]
    env = {var["name"]: var.get("value") for var in _cronjob_container()["env"]}
    script = _cronjob_script()
    # The Ray job bounds itself (interrupt first: refresh releases its lock), whoever watches it.
    assert re.search(r'-- \\\n\s+timeout --signal=INT --kill-after=(\d+) "\$REFRESH_DEADLINE_S" "\$@"', script), script
    kill_after_s = int(re.search(r"--kill-after=(\d+)", script).group(1))
    # The follower gives up after the job's own deadline plus a margin, and then stops it.
    margin_s = int(
        re.search(r"follow_until=\$\(\( \$\(date \+%s\) \+ REFRESH_DEADLINE_S \+ (\d+) \)\)", script).group(1)
    )
    assert re.search(r'ray job stop [^\n]*"\$id"', script)
    assert margin_s > kill_after_s, "the follower must not stop a job its own timeout is still ending"
    startup_allowance_s = 600  # image pull, scheduling
    assert int(env["REFRESH_DEADLINE_S"]) + margin_s + startup_allowance_s <= job["activeDeadlineSeconds"]
    rules = job["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "submit", "operator": "In", "values": [3]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert (
        job["backoffLimit"] >= 1
        and one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    )


def _defined_env() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    secrets = {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {})) for d in objects_of_kind("Secret")
    }
    config_maps = {d["metadata"]["name"]: set(d.get("data", {})) for d in objects_of_kind("ConfigMap")}
    return secrets, config_maps


def containers_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_env_references_resolve_and_command_variables_are_defined() -> None:
    secrets, config_maps = _defined_env()
    for where, spec in pod_specs():
        for container in containers_of(spec):
            available: set[str] = set()
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, f"{where}: Secret {source['secretRef']['name']}"
                    available |= secrets[source["secretRef"]["name"]]
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, f"{where}: ConfigMap"
                    available |= config_maps[source["configMapRef"]["name"]]
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{where}: {ref}"
                available.add(var["name"])
            for arg in [*container.get("command", []), *container.get("args", [])]:
                for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert name in available, f"{where}: $({name}) is not defined in the container's environment"


def test_mlflow_server_uses_postgres_and_s3_from_secret_and_configmap() -> None:
    secrets, config_maps = _defined_env()
    container = one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[:2] == ["mlflow", "server"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in argv
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in argv
    env = {var["name"]: var for var in container.get("env", [])}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    config = one("ConfigMap")["data"]
    assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_DEFAULT_REGION",
        "VAEGEN_OUTPUT",
    ):
        assert config.get(key), f"ConfigMap lacks {key}"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set().union(*secrets.values())
    # The tracking URI must reach the Service, and mlflow must accept its Host header.
    service = one("Service", "mlflow")
    uri = urlsplit(config["MLFLOW_TRACKING_URI"])
    assert uri.hostname.split(".")[0] == service["metadata"]["name"]
    assert uri.port in [port["port"] for port in service["spec"]["ports"]]
    allowed = config["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert any(fnmatch.fnmatch(uri.netloc, pattern) for pattern in allowed), f"{uri.netloc} not in allowed hosts"


# Settings every worker of a multi-worker `mlflow server` reads, and what they must be.
MLFLOW_WORKER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "1800"}
MLFLOW_SHARED_KEYS = ("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "MLFLOW_CRYPTO_KEK_PASSPHRASE")
POSTGRES_MAX_CONNECTIONS = 100  # PostgreSQL's default
MLFLOW_STORES_PER_WORKER = 2  # one SQLAlchemy engine (pool) each for the tracking and the registry store


def _connections_per_replica(workers: int, env: dict[str, str]) -> int:
    pool = int(env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]) + int(env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"])
    return workers * MLFLOW_STORES_PER_WORKER * pool


def test_mlflow_deployment_is_consistent_across_workers() -> None:
    deployment = one("Deployment", "mlflow")
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    server = spec["containers"][0]
    # The schema is created or migrated once, before the server and its workers start.
    assert init["command"] == ["mlflow", "db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"]
    assert init["env"] == [var for var in server["env"] if var["name"] == "MLFLOW_BACKEND_STORE_URI"]
    assert init["image"] == server["image"]
    assert deployment["spec"]["replicas"] == 1, "several new pods on an empty database would each create the schema"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1, "one migrating pod at a time"
    args = server["args"]
    workers = int(next(arg.split("=", 1)[1] for arg in args if arg.startswith("--workers=")))
    assert workers >= 2 and "--serve-artifacts" in args
    env = {var["name"]: var.get("value") for var in server["env"]}
    assert {key: env.get(key) for key in MLFLOW_WORKER_ENV} == MLFLOW_WORKER_ENV
    assert _connections_per_replica(workers, env) + 10 <= POSTGRES_MAX_CONNECTIONS
    keys = next(d for d in objects_of_kind("Secret") if d["metadata"]["name"] == "mlflow-keys")
    assert set(keys["stringData"]) == set(MLFLOW_SHARED_KEYS)
    assert {"secretRef": {"name": "mlflow-keys"}} in server["envFrom"]
    header = (K8S / "mlflow.yaml").read_text()
    budget = f"{workers} x {MLFLOW_STORES_PER_WORKER} x 10 = {_connections_per_replica(workers, env)} per replica"
    assert budget in " ".join(header.split()), f"mlflow.yaml's header must state the connection budget: {budget!r}"


def test_compose_mlflow_is_consistent_across_workers() -> None:
    services = compose()["services"]
    upgrade, mlflow = services["mlflow-db-upgrade"], services["mlflow"]
    assert mlflow["depends_on"]["mlflow-db-upgrade"] == {"condition": "service_completed_successfully"}
    assert str(upgrade["restart"]) == "no"
    server_uri = re.search(r'--backend-store-uri "([^"]+)"', " ".join(mlflow["command"])).group(1)
    assert f'mlflow db upgrade "{server_uri}"' in " ".join(upgrade["command"]), (
        "the upgrade must migrate the server's database"
    )
    command = " ".join(mlflow["command"]).split()
    workers = int(command[command.index("--workers") + 1])
    assert workers >= 2 and "--serve-artifacts" in command
    env = mlflow["environment"]
    assert {key: env.get(key) for key in MLFLOW_WORKER_ENV} == MLFLOW_WORKER_ENV
    assert _connections_per_replica(workers, env) + 10 <= POSTGRES_MAX_CONNECTIONS
    for key in MLFLOW_SHARED_KEYS:
        assert env[key] == f"${{{key}:?set {key} in deploy/.env}}", f"{key} must come from deploy/.env, required"


def test_mlflow_flags_used_by_deploy_exist() -> None:
    from click.testing import CliRunner
    from mlflow.cli import cli

    server_flags = {
        arg.split("=", 1)[0] for arg in one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    }
    server_flags |= {
        word for word in " ".join(compose()["services"]["mlflow"]["command"]).split() if word.startswith("--")
    }
    help_text = CliRunner().invoke(cli, ["server", "--help"]).output
    missing = sorted(
        flag for flag in server_flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)
    )
    assert not missing, f"`mlflow server` has no {missing}"
    assert CliRunner().invoke(cli, ["db", "upgrade", "--help"]).exit_code == 0


def test_the_runbooks_webhook_key_command_makes_a_key_mlflow_accepts() -> None:
    from cryptography.fernet import Fernet

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed here; the runbook's command needs it")
    command = "openssl rand -base64 32 | tr '+/' '-_'"
    assert command in RUNBOOK.read_text() and command in ENV_EXAMPLE.read_text()
    for _ in range(20):  # random bytes: '+' and '/' turn up in most keys
        key = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        Fernet(key.encode())  # what MLflow does with MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY at import


def _configmap_env() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in objects_of_kind("ConfigMap")}


def _effective_env(container: dict[str, Any]) -> dict[str, str | None]:
    """A container's plain variables as Kubernetes resolves them: envFrom ConfigMaps first, then env wins."""
    config_maps, resolved = _configmap_env(), {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            resolved.update(config_maps.get(source["configMapRef"]["name"], {}))
    for var in container.get("env", []):
        resolved[var["name"]] = var.get("value")
    return resolved


# Compose services whose image runs no Python, so nothing there could unpickle a model.
NON_PYTHON_SERVICES = {"postgres": "postgres", "minio": "minio/minio", "minio-init": "minio/mc"}


def test_pickle_deserialization_is_off_in_every_python_process() -> None:
    variable = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    containers = [
        (f"{path.name}{where}/{c['name']}", c)
        for path, doc in k8s_objects()
        for where, spec in all_pod_specs_in(doc)
        for c in containers_of(spec)
    ]
    names = sorted({c["name"] for _, c in containers})
    assert names == ["db-upgrade", "mlflow", "ray-head", "ray-job-submitter", "ray-worker", "submit", "webhook"], names
    # 3 Ray clusters x (head, GPU worker), 2 submitters, the CronJob's, mlflow and its db-upgrade, the webhook receiver.
    assert len(containers) == 12, [where for where, _ in containers]
    for where, container in containers:
        assert _effective_env(container).get(variable) == "false", f"{where}: {variable} is not 'false'"
    for path in COMPOSE_FILES:
        for name, service in compose(path)["services"].items():
            if path != COMPOSE:
                continue  # overlays add devices, not processes
            image = str(service.get("image", ""))
            if name in NON_PYTHON_SERVICES:
                assert NON_PYTHON_SERVICES[name] in image and "build" not in service, f"{name} runs {image}"
                continue
            assert (service.get("environment") or {}).get(variable) == "false", f"compose service {name}: {variable}"
    assert re.search(rf"^\s+{variable}=false\s*$", DOCKERFILE.read_text(), re.M), (
        f"deploy/Dockerfile: ENV {variable}=false"
    )
    runbook = " ".join(RUNBOOK.read_text().split())
    assert "MLflow 3.17 still unpickles model artifacts by default" in runbook


def test_secrets_hold_placeholders_only() -> None:
    for secret in objects_of_kind("Secret"):
        assert "data" not in secret, "no base64 data in the repository"
        for key, value in secret.get("stringData", {}).items():
            assert value == "REPLACE_ME", f"Secret {secret['metadata']['name']}.{key} must be a placeholder"


def _dockerfile_ray_version() -> str:
    match = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-", DOCKERFILE.read_text(), re.M)
    assert match, "deploy/Dockerfile: ARG RAY_IMAGE=rayproject/ray:<version>-... expected"
    return match.group(1)


def test_one_image_and_one_ray_version_everywhere() -> None:
    ray_version = _dockerfile_ray_version()
    images = {c["image"] for _, spec in pod_specs() for c in containers_of(spec)}
    assert len(images) == 1, f"every vaegen pod must run the same image, found {images}"
    for where, spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray_version, f"{where}: rayVersion {spec['rayVersion']} != image {ray_version}"
    for path in COMPOSE_FILES:
        for tag in re.findall(r"rayproject/ray:([0-9.]+)-", path.read_text()):
            assert tag == ray_version, f"{rel(path)}: Ray {tag} != {ray_version}"
    # pip must accept the image's Ray, or `pip install .` would fail against the constraint.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ray_req = next(Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "ray")
    assert ray_req.specifier.contains(ray_version), f"pyproject's {ray_req} excludes Ray {ray_version}"


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def test_dockerfile_builds_vaegen_on_ray_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any(line.startswith("FROM ${RAY_IMAGE}") for line in instructions)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must run as a non-root user"
    assert re.search(r"pip install\b[^\n]*(\\\n[^\n]*)*\s\.\s", text), "the image installs vaegen with `pip install .`"
    assert re.search(r"^ENV [^\n]*(\\\n[^\n]*)*MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false", text, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = " ".join(line for line in instructions if line.startswith("COPY "))
    for needed in ["pyproject.toml", pyproject["project"]["readme"], *packages]:
        assert re.search(rf"\s{re.escape(needed)}\s", f" {copied} "), f"the Dockerfile does not COPY {needed}"
    scripts = pyproject["project"]["scripts"]
    assert {"vaegen", "generate"} <= set(scripts), "the manifests call both console scripts"


CPU_CONSTRAINT = "deploy/torch-cpu-constraints.txt"


def test_cpu_images_get_the_cpu_torch_build_as_install_sh_does() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TORCH=cuda$", text, re.M), "GPU images stay the default"
    cpu_branch = re.search(r"^\s+cpu\) (.*?) ;;", text, re.M).group(1)
    assert f"--constraint {CPU_CONSTRAINT}" in cpu_branch and "--extra-index-url $TORCH_CPU_INDEX" in cpu_branch, (
        cpu_branch
    )
    assert re.search(r"^\s+cuda\) torch_args=\"\" ;;", text, re.M)
    assert re.search(r"^\s+\*\) echo [^\n]*TORCH must be cpu or cuda[^\n]*exit 2 ;;", text, re.M), (
        "a typo must fail the build"
    )
    assert re.search(r"pip install --constraint /tmp/constraints.txt \$torch_args \\$", text, re.M)
    assert "assert torch.version.cuda is None" in text, "the CPU build proves it got a CPU torch"
    # One rule for both: the same constraint file and the same default index as deploy/install.sh.
    assert "triton<0" in (ROOT / CPU_CONSTRAINT).read_text().splitlines()
    install = (DEPLOY / "install.sh").read_text()
    index = re.search(r"^ARG TORCH_CPU_INDEX=(\S+)$", text, re.M).group(1)
    assert f"VAEGEN_TORCH_CPU_INDEX:-{index}" in install and CPU_CONSTRAINT in install
    # The file reaches the build: copied next to the sources, and let through the context filter.
    assert re.search(rf"^COPY [^\n]* {re.escape(CPU_CONSTRAINT)} /tmp/vaegen-src/deploy/$", text, re.M)
    assert f"!{CPU_CONSTRAINT}" in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    # Compose builds CPU images; the GPU overlay builds the head's image with CUDA.
    cpu_args = compose()["x-vaegen-image"]["build"]["args"]
    assert cpu_args["TORCH"] == "cpu" and cpu_args["RAY_IMAGE"].endswith("-cpu}")
    gpu_args = compose(DEPLOY / "compose.gpu.yaml")["services"]["ray-head"]["build"]["args"]
    assert gpu_args["TORCH"] == "cuda" and re.search(r"-cu\d+\}$", gpu_args["RAY_IMAGE"])


# --------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=rel)
def test_compose_ports_bind_loopback_unless_configured(path: Path) -> None:
    for name, service in compose(path)["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == LOOPBACK_DEFAULT, f"{name}: {port}"
            else:
                assert str(port).startswith(f"{LOOPBACK_DEFAULT}:"), f"{name}: {port!r} must bind {LOOPBACK_DEFAULT}"


def test_compose_long_running_services_have_healthchecks() -> None:
    services = compose()["services"]
    long_running = {"postgres", "minio", "mlflow", "ray-head", "refresh", "webhook"}
    assert long_running <= set(services)
    for name, service in services.items():
        one_shot = str(service.get("restart", "no")) == "no"  # bucket creation, the ad-hoc cli
        assert not (one_shot and name in long_running), f"{name} must restart"
        if not one_shot:
            check = service.get("healthcheck") or {}
            assert check.get("test") and check["test"] != ["NONE"] and not check.get("disable"), (
                f"{name}: no healthcheck"
            )


def test_compose_stack_wiring() -> None:
    services = compose()["services"]
    mlflow = " ".join(services["mlflow"]["command"])
    assert "mlflow server" in mlflow
    assert re.search(r"--backend-store-uri \"?postgresql://", mlflow)
    assert "--artifacts-destination s3://mlflow" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    head = " ".join(services["ray-head"]["command"])
    assert re.search(r"ray start --head --block\b.*--dashboard-host 0\.0\.0\.0", head, re.S)
    # The refresh loop submits to the head's job API (a Ray driver must run on a Ray node).
    refresh = " ".join(services["refresh"]["command"])
    assert "while true" in refresh and "sleep" in refresh
    assert re.search(r"ray job submit\b[^\n]* -- vaegen refresh ", refresh)
    assert services["refresh"]["environment"]["RAY_ADDRESS"] == "http://ray-head:8265"
    assert services["refresh"]["environment"]["REFRESH_INTERVAL_S"].startswith("${REFRESH_INTERVAL_S")
    init = services["minio-init"]
    assert " ".join(init["command"]).count("mc mb") == 1 and str(init["restart"]) == "no"
    # Where vaegen runs (the head: job drivers; cli: registry commands) it finds MLflow and S3.
    for name in ("ray-head", "cli"):
        env = services[name]["environment"]
        for key in ("MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
            assert env.get(key), f"{name}: {key}"
        assert "RAY_ADDRESS" not in env, f"{name}: vaegen's own ray.init() must not get a job-API address"
    # Clients reach mlflow by its service name: that Host header must be accepted.
    tracking = urlsplit(services["ray-head"]["environment"]["MLFLOW_TRACKING_URI"])
    default_hosts = re.search(r"\$\{MLFLOW_ALLOWED_HOSTS:-([^}]*)\}", COMPOSE.read_text()).group(1).split(",")
    assert any(fnmatch.fnmatch(tracking.netloc, pattern) for pattern in default_hosts)


def _compose_variables() -> dict[str, str]:
    """Variables Compose interpolates (`${NAME...}`, not the `$${NAME}` left to the container shell)."""
    found: dict[str, str] = {}
    for path in COMPOSE_FILES:
        for name, rest in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", path.read_text()):
            found.setdefault(name, rest)
            if rest.startswith(":?"):
                found[name] = rest
    return found


def test_compose_secrets_come_from_env_without_defaults() -> None:
    variables = _compose_variables()
    secret_names = [n for n in variables if re.search(r"PASSWORD|PASSPHRASE|SECRET", n)]
    assert secret_names, "no secret variables found in compose files"
    for name in secret_names:
        assert variables[name].startswith(":?"), f"${{{name}}} must be required (:?), never defaulted"


def test_env_example_documents_every_variable_and_holds_no_secret() -> None:
    documented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            documented[match.group(1)] = match.group(2)
    missing = sorted(set(_compose_variables()) - set(documented))
    assert not missing, f"deploy/.env.example does not mention {missing}"
    for name, value in documented.items():
        if re.search(r"PASSWORD|PASSPHRASE|SECRET", name):
            assert value == "", f"{name} must be left empty in .env.example"
    assert (DEPLOY / ".gitignore").read_text().splitlines().count(".env") == 1, "deploy/.env must be git-ignored"


# --------------------------------------------------------------------------------------------
# The vaegen command lines in the manifests and the runbook exist, with those flags
# --------------------------------------------------------------------------------------------

COMMAND_GROUPS = {"webhook"}  # vaegen commands that take a subcommand
_SEPARATORS = {";", ";;", "&&", "||", "|", "&", "(", ")", "!", "then", "do", "done", "else", "elif", "fi"}


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes in prose-like text: fall back to whitespace
        return line.split()


def commands_in(text: str) -> set[tuple[str, str | None, tuple[str, ...]]]:
    """(program, subcommand, flags) of every `vaegen <cmd> ...` / `generate ...` in shell-like text."""
    found = set()
    for line in text.replace("\\\n", " ").splitlines():
        tokens = _tokens(line.strip())
        for i, token in enumerate(tokens):
            previous = tokens[i - 1] if i else ""
            if previous.startswith("-") and previous != "--":
                continue  # an option's value, as in `kubectl -n vaegen ...`
            if token.rsplit("/", 1)[-1] == "vaegen":  # also /opt/vaegen/venv/bin/vaegen
                nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
                sub = nxt if re.fullmatch(r"[a-z][a-z-]*", nxt) else None
                program, start = "vaegen", i + (2 if sub else 1)
                if sub in COMMAND_GROUPS and start < len(tokens):  # `vaegen webhook serve ...`
                    sub, start = f"{sub} {tokens[start]}", start + 1
            elif token.rsplit("/", 1)[-1] == "generate" and (
                i == 0 or previous in _SEPARATORS | {"--", "exec"} or previous.startswith("$")
            ):
                program, sub, start = "generate", None, i + 1
            else:
                continue
            flags = []
            for arg in tokens[start:]:
                if arg in _SEPARATORS or arg == "--":
                    break
                if arg.startswith("--") and not any(char.isspace() for char in arg):  # not a quoted value
                    flags.append(arg.split("=", 1)[0])
            if sub or flags or program == "generate":
                found.add((program, sub, tuple(flags)))
    return found


def _strings(node: Any) -> Iterator[str]:
    """Every string scalar of a YAML tree, plus every all-string list joined as one command line."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        if node and all(isinstance(item, str) for item in node):
            yield shlex.join(node)
        for item in node:
            yield from _strings(item)


def manifest_commands() -> set[tuple[str, str | None, tuple[str, ...]]]:
    texts = (text for path in YAML_FILES for doc in load_docs(path) for text in _strings(doc))
    return {cmd for text in texts for cmd in commands_in(text)}


def runbook_commands() -> set[tuple[str, str | None, tuple[str, ...]]]:
    blocks = re.findall(r"^```[\w-]*\n(.*?)^```", RUNBOOK.read_text(), re.S | re.M)
    return {cmd for block in blocks for cmd in commands_in(block)}


def _cli_usages() -> dict[tuple[str, str | None], set[str]]:
    usages: dict[tuple[str, str | None], set[str]] = {}
    for program, sub, flags in manifest_commands() | runbook_commands():
        usages.setdefault((program, sub), set()).update(flags)
    return usages


CLI_USAGES = collect(_cli_usages, {})


def test_command_extraction_finds_the_expected_commands() -> None:
    in_manifests = {(program, sub) for program, sub, _ in manifest_commands()}
    assert {("generate", None), ("vaegen", "refresh")} <= in_manifests, in_manifests
    in_runbook = {(program, sub) for program, sub, _ in runbook_commands()}
    expected = {("vaegen", cmd) for cmd in ("train", "promote", "refresh", "inspect", "rollback")}
    expected.add(("generate", None))
    assert expected <= in_runbook, expected - in_runbook
    refresh_flags = set().union(*(set(f) for p, s, f in manifest_commands() if (p, s) == ("vaegen", "refresh")))
    assert {"--model", "--n", "--out", "--keep"} <= refresh_flags


def _help_text(program: str, sub: str | None) -> str:
    import click
    from click.testing import CliRunner

    from jobs.cli import main  # until the CLI lands this import fails: that is the point

    runner = CliRunner()
    if program == "vaegen":
        result = runner.invoke(main, [*(sub.split() if sub else []), "--help"], prog_name="vaegen")
        assert result.exit_code == 0, f"`vaegen {sub or ''} --help` failed:\n{result.output}"
        return result.output
    from jobs.cli import generate_main

    if isinstance(generate_main, click.Command):
        result = runner.invoke(generate_main, ["--help"], prog_name="generate")
        assert result.exit_code == 0, f"`generate --help` failed:\n{result.output}"
        return result.output
    code = "import sys; from jobs.cli import generate_main; sys.argv = ['generate', '--help']; generate_main()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`generate --help` failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize(
    ("program", "sub"), sorted(CLI_USAGES, key=lambda k: (k[0], k[1] or "")), ids=lambda value: value or "-"
)
def test_cli_commands_used_by_deploy_exist_with_their_flags(program: str, sub: str | None) -> None:
    help_text = _help_text(program, sub)
    missing = [
        flag
        for flag in sorted(CLI_USAGES[(program, sub)])
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)
    ]
    name = " ".join(part for part in (program, sub) if part)
    assert not missing, f"`{name}` does not document {missing}; its --help says:\n{help_text}"
