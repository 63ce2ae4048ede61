"""Child process of test_fuzz_records.py: every record vaegen parses, mutated by a seeded generator, parsed here
under a memory limit (RLIMIT_AS: what the imports use plus MEMORY_BUDGET_BYTES). One JSON line per case on stdout:
{"kind", "case", "status": ok | refused | crash, "message", "seconds"}; a crash line carries the traceback.

Run as `python tests/fuzz_records.py SEED CASES_PER_KIND` from the repository root.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jobs.generate import audit_record, card, locks, manifest, parts, verify
from jobs.generate.audit_record import AuditRecord
from jobs.generate.published import LatestPointer
from jobs.generate.spec import DatasetSpec, spec_from_record
from jobs.generate.storage import Storage, check_name
from registry import artifacts
from registry.holders import LockRecord
from vae_core.errors import VaegenError

MEMORY_BUDGET_BYTES = 500 << 20
HOSTILE: list[Any] = [
    10**12,
    -1,
    0,
    2**63,
    2**64 + 1,
    -(10**30),
    3 * 10**8,
    1e308,
    float("inf"),
    float("nan"),
    True,
    None,
    "",
    "x" * 100_000,
    "../../etc",
    "a\nb",
    [],
    {},
    [10**9] * 3,
    list(range(50_000)),
    {"a": 1},
    [[[[[]]]]],
    "part-00000.parquet",
    [8, 8],
    [50_000, 50_000],
    "vaegen-dataset/2",
]
SPEC = DatasetSpec("vae-decoder", 1, 10, 0, 2, (8, 8), rows_per_shard=4, block_rows=4)
DEFAULT_SHAPES = {"net.0.weight": (128, 2), "net.0.bias": (128,), "net.2.weight": (64, 128), "net.2.bias": (64,)}


def valid_manifest() -> dict[str, Any]:
    files = [
        {
            "name": f"part-{shard:05d}.parquet",
            "first_sample_id": shard * 4,
            "rows": min(4, 10 - shard * 4),
            "size_bytes": 100,
            "checksum": "0" * 32,
        }
        for shard in range(3)
    ]
    return {
        "format": "vaegen-dataset/3",
        "dataset_id": SPEC.dataset_id,
        "n": 10,
        "rows_per_shard": 4,
        "dataset_seed": 0,
        "seed_scheme": "splitmix64-boxmuller-v1",
        "dtype": "float32",
        "layout": "tensor",
        "compression": "zstd",
        "compression_level": 1,
        "latent_dim": 2,
        "sample_shape": [8, 8],
        "labels": None,
        "spec": SPEC.to_dict(),
        "spec_fingerprint": SPEC.fingerprint(),
        "schema": [],
        "model": {"name": "vae-decoder", "version": 1, "run_id": "r1"},
        "checksum_algorithm": "xxh3_128",
        "files": files,
        "total_bytes": 300,
        "timings": {"finished_at": "x"},
        "execution": {},
        "lineage": {},
        "created_by": None,
        "provenance": "recorded",
        "vaegen_version": "0.1.0",
    }


def mutate_json(record: dict[str, Any], rng: random.Random) -> bytes:
    """Replace, delete or add one field anywhere in the record, or damage its bytes."""
    record = json.loads(json.dumps(record))
    choice = rng.random()
    if choice < 0.15:
        data = json.dumps(record).encode()
        cut = rng.randrange(len(data))
        return data[:cut] if rng.random() < 0.5 else data[:cut] + bytes([rng.randrange(256)]) + data[cut + 1 :]
    if choice < 0.2:
        return rng.choice([b"[" * 100_000, b"1" * 5_000, b'"' + b"x" * 200_000 + b'"', b"[]", b"\xff\xfe", b""])
    containers = [record]
    node: Any = record
    while isinstance(node, (dict, list)) and node and rng.random() < 0.6:
        node = node[rng.choice(list(node))] if isinstance(node, dict) else rng.choice(node)
        if isinstance(node, (dict, list)):
            containers.append(node)
    target = rng.choice(containers)
    if isinstance(target, dict) and target:
        key = rng.choice(list(target))
        if rng.random() < 0.2:
            del target[key]
        else:
            target[key] = rng.choice(HOSTILE)
    elif isinstance(target, list) and target:
        target[rng.randrange(len(target))] = rng.choice(HOSTILE)
    return json.dumps(record).encode()


def weights_bytes() -> bytes:
    path = Path(tempfile.mkdtemp()) / "weights.npz"
    np.savez(path, **{key: np.zeros(shape, dtype=np.float32) for key, shape in DEFAULT_SHAPES.items()})
    return path.read_bytes()


def bomb_bytes() -> bytes:
    """A weights.npz whose first member is a valid header followed by 64 MiB of deflated zeros (~1000x)."""
    path = Path(tempfile.mkdtemp()) / "weights.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((128, 2), dtype=np.float32))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("net.0.weight.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for _ in range(64):
                member.write(bytes(1 << 20))
        for key, shape in list(DEFAULT_SHAPES.items())[1:]:
            archive.writestr(f"{key}.npy", _npy(np.zeros(shape, dtype=np.float32)))
    return path.read_bytes()


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def crafted_npz(shape: tuple[int, ...], dtype: str, data_bytes: int | None = None) -> bytes:
    """A zip with valid CRCs whose first member's .npy header says `shape` and `dtype`, followed by `data_bytes`
    bytes (default: what the header implies, capped at 1 MiB)."""
    path = Path(tempfile.mkdtemp()) / "weights.npz"
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        with archive.open("net.0.weight.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            member.write(bytes(min(data_bytes if data_bytes is not None else 4 * int(np.prod(shape)), 1 << 20)))
        for key, other in list(DEFAULT_SHAPES.items())[1:]:
            archive.writestr(f"{key}.npy", _npy(np.zeros(other, dtype=np.float32)))
    return path.read_bytes()


CRAFTED = [
    ((128, 2), "<f4", None),
    ((50_000, 2), "<f4", None),
    ((128, 2), "|O", None),
    ((128, 2), "<f8", 2048),
    ((128, 2), "<f4", 100),
    ((10**12, 10**12), "<f4", 0),
    ((2, 128), "<f4", None),
    ((128, 2, 1), "<f4", None),
]


def mutate_npz(base: bytes, rng: random.Random) -> bytes:
    data = bytearray(base)
    choice = rng.random()
    if choice < 0.3:  # a header's shape or dtype rewritten in place (same length keeps the zip valid, CRC aside)
        text = bytes(data)
        old = rng.choice([b"(128, 2)", b"(64, 128)", b"'<f4'"])
        new = rng.choice([b"(999999,)", b"(10**9,2)", b"'|O8'", b"(12, 2) ", b"'<f8'", b"(0, 9999)"])[: len(old)].ljust(
            len(old)
        )
        return text.replace(old, new, 1)
    if choice < 0.5:
        return bytes(data[: rng.randrange(len(data))])
    for _ in range(rng.randrange(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


class Fuzzer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.storage = Storage(str(folder))

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def manifest(self, data: bytes) -> str:
        self.write(f"{SPEC.dataset_id}/{manifest.MANIFEST}", data)
        _, _, record = verify.open_committed(str(self.folder / SPEC.dataset_id))
        problems = verify.manifest_problems(record)
        if problems:
            raise VaegenError(problems[0])
        return "ok"

    def progress(self, data: bytes) -> str:
        self.write(f"{SPEC.dataset_id}/{manifest.PROGRESS}", data)
        record = self.storage.read_json(SPEC.dataset_id, manifest.PROGRESS)
        manifest.recorded_run_id(self.storage, SPEC.dataset_id)
        return spec_from_record(record, SPEC.dataset_id).dataset_id

    def sidecar(self, data: bytes) -> str:
        self.write(f"{SPEC.dataset_id}/_parts/part-00000.parquet.json", data)
        record = self.storage.read_json(SPEC.dataset_id, "_parts", "part-00000.parquet.json")
        return str(parts.sidecar_matches(record, SPEC.fingerprint(), SPEC.shard_range(0)))

    def lock(self, data: bytes) -> str:
        held = LockRecord.from_bytes(data)
        message = str(locks._busy(self.storage, SPEC.dataset_id, ".x.lock", held))
        if "\n" in message or len(message) > 2_000:
            raise AssertionError(f"busy message of {len(message)} characters or several lines")
        return "ok"

    def audit(self, data: bytes) -> str:  # as refresh, the card and `vaegen datasets` read DATASET/_audit.json
        self.write(f"{SPEC.dataset_id}/{manifest.AUDIT}", data)
        record = AuditRecord.from_json(self.storage.read_json(SPEC.dataset_id, manifest.AUDIT))
        return " ".join([audit_record.summary(record), record.failure_line, card._audit_text(record)[:40]])

    def latest(self, data: bytes) -> str:  # as `vaegen status` reads ROOT/latest, and then the id it names
        self.write("latest", data)
        pointer = LatestPointer.from_json(self.storage.read_json("latest"))
        return check_name(pointer.dataset_id) if pointer.dataset_id is not None else "none"

    def config(self, data: bytes) -> str:
        return str(artifacts.read_config(self.write("config.json", data)).latent_dim)

    def npz(self, data: bytes) -> str:
        problem = artifacts.weights_problem(self.write("weights.npz", data), DEFAULT_SHAPES)
        if problem is not None:
            raise artifacts.RefusedVersion(problem)
        return "ok"


def run_case(kind: str, case: int, parse: Callable[[bytes], str], data: bytes) -> None:
    started = time.perf_counter()
    try:
        status, message = "ok", parse(data)
    except VaegenError as error:
        status, message = "refused", str(error)
    except BaseException:  # noqa: BLE001 - what the test looks for: anything vaegen does not turn into one line
        status, message = "crash", traceback.format_exc()
    seconds = time.perf_counter() - started
    print(
        json.dumps({"kind": kind, "case": case, "status": status, "message": message[:4000], "seconds": seconds}),
        flush=True,
    )


def main(seed: int, cases: int) -> None:
    rng = random.Random(seed)
    fuzzer = Fuzzer(Path(tempfile.mkdtemp(prefix="vaegen-fuzz-")))
    bases = {
        "manifest": (fuzzer.manifest, valid_manifest()),
        "manifest-format-2": (fuzzer.manifest, {**valid_manifest(), "format": "vaegen-dataset/2"}),
        "progress": (
            fuzzer.progress,
            manifest.progress_record(SPEC, {"name": "vae-decoder", "version": 1}, "r1").to_json(),
        ),
        "sidecar": (
            fuzzer.sidecar,
            {
                "shard": 0,
                "name": "part-00000.parquet",
                "first_sample_id": 0,
                "rows": 4,
                "size_bytes": 100,
                "checksum": "0" * 32,
                "spec_fingerprint": SPEC.fingerprint(),
            },
        ),
        "lock": (
            fuzzer.lock,
            {
                "owner": "ab",
                "host": "h",
                "boot_id": "b",
                "pid": 1,
                "pid_start": "1",
                "acquired_at": 1.0,
                "user": "u",
                "since": "2026",
                "token": "t",
            },
        ),
        "audit": (
            fuzzer.audit,
            {
                "format": "vaegen-audit/1",
                "dataset_id": SPEC.dataset_id,
                "manifest_sha256": "0" * 64,
                "verdict": "fail",
                "failed_check": "deep",
                "audited_at": "2026-12-07T00:00:00+00:00",
                "seconds": 1.5,
                "config": {"enabled": True},
                "checks": [{"name": "deep", "status": "fail", "detail": "x differs", "figures": {}}],
            },
        ),
        "latest": (fuzzer.latest, {"dataset_id": SPEC.dataset_id, "location": "/x", "manifest_sha256": "0"}),
        "config": (
            fuzzer.config,
            {
                "input_shape": [8, 8],
                "latent_dim": 2,
                "hidden_sizes": [128],
                "num_classes": 0,
                "class_prior": [],
                "architecture": "mlp",
                "conv_channels": [],
                "prior_flow_layers": 0,
                "prior_flow_hidden": 256,
                "pixel_semantics": "bernoulli-mean-in-[0,1]",
            },
        ),
    }
    work = [
        (kind, case, parse, json.dumps(base).encode() if case == 0 else mutate_json(base, rng))
        for kind, (parse, base) in bases.items()
        for case in range(cases)
    ]
    weights = weights_bytes()
    work += [("npz", case, fuzzer.npz, weights if case == 0 else mutate_npz(weights, rng)) for case in range(cases)]
    work += [("npz-crafted", case, fuzzer.npz, crafted_npz(*args)) for case, args in enumerate(CRAFTED)]
    work.append(("npz-bomb", 0, fuzzer.npz, bomb_bytes()))
    used = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + MEMORY_BUDGET_BYTES, resource.RLIM_INFINITY))
    for kind, case, parse, data in work:
        run_case(kind, case, parse, data)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
