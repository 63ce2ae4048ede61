"""The CUDA path (marker `cuda`): decoding on a GPU against the CPU, a dataset made on GPU workers, and its deep
inspection. Every test skips, saying why, where CUDA is absent; `bash benchmarks/gpu_check.sh` runs them on a GPU
node and records their outcomes (benchmarks/gpu_check.py). The job-level tests need Ray and MLflow too."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.generate.predictor import Predictor
from jobs.generate.spec import DatasetSpec
from jobs.generate.verify import X_TOLERANCE
from vae_core.config import VAEConfig
from vae_core.model import VAE

NO_CUDA = (
    None
    if torch.cuda.is_available()
    else (f"CUDA absent: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU")
)
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(NO_CUDA is not None, reason=NO_CUDA or "")]

MLP = VAEConfig(input_shape=(28, 28), latent_dim=2, hidden_sizes=(128,))  # the default recipe, 28x28
CONV = VAEConfig(
    input_shape=(28, 28),
    latent_dim=16,
    hidden_sizes=(),
    architecture="conv",
    conv_channels=(32, 64),
    prior_flow_layers=8,
)  # the conv recipe with its prior flow
BLOCK = 4_096
N, ROWS_PER_SHARD = 32_768, 8_192  # 4 parts, 2 decode blocks each: shards split differently over 1 and 2 workers


def predictor(config: VAEConfig, device: str, dtype: str = "float32") -> Predictor:
    torch.manual_seed(0)
    decoder = VAE(config).decoder
    spec = DatasetSpec(
        "cuda-test",
        1,
        n=N,
        seed=42,
        latent_dim=config.latent_dim,
        sample_shape=config.input_shape,
        dtype=dtype,
        block_rows=BLOCK,
    )
    state = {key: value.numpy() for key, value in decoder.state_dict().items()}
    return Predictor(spec, config.to_dict(), state, device)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("config", [MLP, CONV], ids=["mlp", "conv"])
def test_decode_on_cuda_repeats_bit_for_bit_and_stays_within_inspects_tolerance_of_cpu(config, dtype):
    ids = {"sample_id": np.arange(BLOCK, 2 * BLOCK, dtype=np.int64)}
    on_cuda, on_cpu = predictor(config, "cuda", dtype), predictor(config, "cpu", dtype)
    first, again, reference = on_cuda(ids), on_cuda(ids), on_cpu(ids)
    assert first["x"].tobytes() == again["x"].tobytes(), "the same block decoded twice on the GPU differs"
    for column in ("sample_id", "seed", "z"):  # drawn on the CPU whatever the device: identical
        np.testing.assert_array_equal(first[column], reference[column])
    difference = np.abs(first["x"].astype(np.float64) - reference["x"].astype(np.float64)).max()
    assert difference <= X_TOLERANCE[dtype], f"CUDA vs CPU decode differ by {difference}, more than inspect allows"


@pytest.fixture(scope="module")
def cuda_datasets(request, tmp_path_factory) -> dict[int, Path]:
    """The conv recipe's untrained decoder, generated on CUDA with 1 and with 2 GPU workers: {workers: folder}.
    On a one-GPU node both workers share it (Ray is told of 2 GPUs and leaves CUDA_VISIBLE_DEVICES alone)."""
    for module in ("ray", "mlflow"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed here: the job-level CUDA tests need it")
    request.getfixturevalue("module_sqlite")
    from conftest import private_local_ray, register_untrained_decoder
    from jobs.generate.config import EngineOptions
    from jobs.generate.job import GenerateConfig, generate

    register_untrained_decoder("cuda-conv", config=CONV)
    root, gpus = tmp_path_factory.mktemp("cuda-datasets"), torch.cuda.device_count()
    folders = {}
    with pytest.MonkeyPatch.context() as patch:
        if gpus < 2:
            patch.setenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "1")
        with private_local_ray(num_cpus=min(8, os.cpu_count()), num_gpus=max(2, gpus)):
            for workers in (1, 2):
                config = GenerateConfig(
                    n=N,
                    model="cuda-conv/1",
                    out=str(root / f"workers-{workers}"),
                    seed=42,
                    rows_per_shard=ROWS_PER_SHARD,
                    engine=EngineOptions(num_workers=workers, device="cuda"),
                )
                folders[workers] = Path(config.out) / generate(config).manifest["dataset_id"]
    return folders


def test_generate_on_cuda_writes_the_same_bytes_with_one_and_two_gpu_workers(cuda_datasets):
    one, two = (json.loads((cuda_datasets[workers] / "_manifest.json").read_text()) for workers in (1, 2))
    assert (one["execution"]["device"], two["execution"]["device"]) == ("cuda", "cuda")
    assert (one["execution"]["num_workers"], two["execution"]["num_workers"]) == (1, 2)
    assert len(one["files"]) == N // ROWS_PER_SHARD
    assert [part["checksum"] for part in one["files"]] == [part["checksum"] for part in two["files"]]


def inspect_deep(folder: Path, **env: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "vaegen"), "inspect", str(folder), "--deep"]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})


def test_inspect_deep_verifies_a_cuda_made_dataset_on_the_gpu_bit_for_bit_and_on_a_cpu_within_tolerance(cuda_datasets):
    on_gpu = inspect_deep(cuda_datasets[2])
    assert on_gpu.returncode == 0, on_gpu.stderr
    assert "compared within" not in on_gpu.stderr, on_gpu.stderr  # re-decoded on CUDA: compared bit for bit
    assert "re-decoded" in on_gpu.stdout, on_gpu.stdout
    on_cpu = inspect_deep(cuda_datasets[2], CUDA_VISIBLE_DEVICES="")
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert f"x compared within {X_TOLERANCE['float32']}" in on_cpu.stderr, on_cpu.stderr
