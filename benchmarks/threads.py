"""Two trainings at once on one machine: torch's default thread pools against one thread per process.

    python benchmarks/threads.py [--steps 400] [--repeats 2] [--out benchmarks/out/threads.json]

What the test suite meets on a 2-core CI machine, where two pytest-xdist workers each start torch: by default
each process sizes its OpenMP pool to every core, so two processes run 2 x cores threads that spin-wait against
each other. Each case starts fresh processes that train the `conv` recipe (vaegen's default: strided convolutions,
the digits) for `--steps` Adam steps and report their training seconds (imports and data loading excluded):
  alone, default     one process, torch's default thread count
  alone, 1 thread    one process, OMP_NUM_THREADS=1
  pair, default      two processes at once, torch's default thread count each
  pair, 1 thread     two processes at once, OMP_NUM_THREADS=1 each (what tests/conftest.py gives each worker)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
sys.path.insert(0, str(REPO))


def train_seconds(steps: int) -> float:
    """The conv recipe's training for `steps` optimizer steps on the digits, in this process; seconds of training."""
    from vae_core import data as sources
    from vae_core.config import RECIPES
    from vae_core.training import TrainConfig, model_config_for, train

    recipe = RECIPES["conv"]
    digits = sources.load("digits")
    model_config = model_config_for(
        digits,
        recipe["latent_dim"],
        tuple(recipe["hidden_sizes"]),
        conditional=False,
        architecture="conv",
        conv_channels=tuple(recipe["conv_channels"]),
    )
    started = time.perf_counter()
    train(digits, model_config, TrainConfig(steps=steps))
    return time.perf_counter() - started


def run_case(processes: int, one_thread: bool, steps: int) -> list[float]:
    """`processes` fresh trainings started together; each one's training seconds."""
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    if one_thread:
        env.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    command = [sys.executable, __file__, "--child", str(steps)]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(child.communicate()[0].split()[-1]) for child in children]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/threads.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{train_seconds(args.child):.3f}")
        return
    cases = {
        "alone, default": (1, False),
        "alone, 1 thread": (1, True),
        "pair, default": (2, False),
        "pair, 1 thread": (2, True),
    }
    results = {}
    for name, (processes, one_thread) in cases.items():
        seconds = [s for _ in range(args.repeats) for s in run_case(processes, one_thread, args.steps)]
        results[name] = {"median_s": round(statistics.median(seconds), 2), "runs_s": [round(s, 2) for s in seconds]}
        print(f"{name:16s} median {results[name]['median_s']:6.2f} s  runs {results[name]['runs_s']}", flush=True)
    report = {
        "benchmark": "threads",
        "steps": args.steps,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": results,
        "pair_speedup_with_1_thread": round(
            results["pair, default"]["median_s"] / results["pair, 1 thread"]["median_s"], 2
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"pair: default / 1 thread = {report['pair_speedup_with_1_thread']}x -> {args.out}")


if __name__ == "__main__":
    main()
