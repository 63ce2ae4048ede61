"""The GPU check, run here as a user runs it with CUDA absent: `bash benchmarks/gpu_check.sh` at a tiny n, its
CPU parts measured and its CUDA parts skipped with the reason in the JSON. On a GPU node the same command measures
the figures of issue 26 (README, "GPU check")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import readme_block
from jobs.generate.predictor import use_exact_cuda_math

REPO = Path(__file__).resolve().parents[1]
N = 2_000
README_SECTION = "### GPU check: `bash benchmarks/gpu_check.sh`"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU self-test; tests/test_cuda.py covers a GPU node")
def test_gpu_check_without_cuda_measures_the_cpu_parts_and_records_why_the_cuda_parts_were_skipped(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "GPU_CHECK_INSTALL": "0",
        "GPU_CHECK_N": str(N),
        "HOME": str(tmp_path),
        "VAEGEN_VENV": str(Path(sys.executable).parents[1]),
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    # The README's line with what its text says to change without a GPU: the variables above, the output folder;
    # --archs conv spares CI the MLP (the same code path) and --scratch keeps the datasets in the test's folder.
    line = readme_block(README_SECTION).split("#")[0].split()
    assert line == ["bash", "benchmarks/gpu_check.sh", "benchmarks/out/gpu_check"], line
    command = [*line[:2], str(out), "--archs", "conv", "--scratch", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["cuda_tests.xml", "gpu_check.json"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (report["complete"], report["failed"], report["n"]) == (True, 0, N)
    assert report["environment"]["cuda_available"] is False and report["environment"]["gpus"] == []

    tests = report["tests"]
    assert tests["status"] == "ran" and tests["counts"] == {"skipped": 6}, tests
    assert all(case["message"].startswith("CUDA absent: torch") for case in tests["cases"]), tests["cases"]
    assert {case["name"].split("[")[0] for case in tests["cases"]} == {
        "test_decode_on_cuda_repeats_bit_for_bit_and_stays_within_inspects_tolerance_of_cpu",
        "test_generate_on_cuda_writes_the_same_bytes_with_one_and_two_gpu_workers",
        "test_inspect_deep_verifies_a_cuda_made_dataset_on_the_gpu_bit_for_bit_and_on_a_cpu_within_tolerance",
    }

    (conv,) = report["models"].values()
    assert conv["config"]["architecture"] == "conv" and conv["config"]["prior_flow_layers"] == 8
    for part in ("decode_cuda", "generate_cuda"):
        assert conv[part]["status"] == "skipped" and conv[part]["reason"].startswith("CUDA absent"), conv[part]
    assert "decode_over_encode_all_cores" not in conv
    encode = conv["encode_cpu"]
    assert encode["status"] == "measured" and encode["rows_measured"] == 4_096 and encode["rows_per_s_per_core"] > 0
    assert 1_000 < encode["bytes_per_row"] < 28 * 28 * 4, encode  # float32 28x28, zstd: under the raw 3,136 bytes
    generated = conv["generate_cpu"]
    assert generated["status"] == "measured" and generated["rows"] == N and generated["parts"] == 1, generated
    assert generated["execution"] == {"device": "cpu", "num_workers": 1, "nodes": 1}
    assert generated["samples"] >= 1 and 0 <= generated["cpu_utilisation_percent"]["mean"] <= 100
    assert generated["process_peak_rss_bytes_max"] > 100 << 20  # the command and its Ray workers, each importing torch
    assert generated["gpu_utilisation_percent"] is None and "inspect_deep" not in generated
    assert not any(tmp_path.glob("vaegen-gpu-check-*")), "the scratch folder and its datasets must be deleted"


def test_exact_cuda_math_turns_tf32_off_and_cudnn_deterministic():
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cuda.matmul.fp32_precision,
    )
    try:
        use_exact_cuda_math()
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)
        assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved[2:]
