"""How fast experience is collected and how much of that speed training keeps, for N = 1, 2, 4, ... workers.

    python benchmarks/throughput.py                         # N up to the number of cores
    python benchmarks/throughput.py --max-envs 16 --episodes-per-env 40 --device cuda
    python benchmarks/throughput.py --max-envs 2 --backend both    # Ray actors beside local processes

For each N it measures, on this machine and in one run:
  (a) raw collection: N environment workers with uniform random actions, no learning;
  (b) training: `bullet_kuka_train.py --num-envs N`, the learner included (its `train`, called here);
  (c) the lecture's one-environment loop, `bullet_kuka_train.py --num-envs 1`.
With one environment the training loop *is* the lecture's loop, so (b) at N = 1 and (c) are one
measurement. Each clock starts once the environments are up and stops at the last counted episode's
end. Prints a Markdown table, then an environment worker's resident memory (Linux) and the replay
memory's bytes per transition.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import sys
import tempfile
import timeit
from pathlib import Path

import torch

from benchmarks.learning import cpu_name
from benchmarks.worker_memory import resident_memory
from common import Observation, ReplayMemory
from grasping.cli import OneLineArgumentParser, positive_int, resolve_device
from grasping.evaluation import random_policy
from grasping.flags import parse_training_args
from grasping.pool import open_pool
from grasping.rollouts import Rollouts
from grasping.training import train


def env_counts(max_envs: int) -> list[int]:
    """1, 2, 4, ... below max_envs, then max_envs itself."""
    counts = [1]
    while counts[-1] * 2 < max_envs:
        counts.append(counts[-1] * 2)
    if max_envs > 1:
        counts.append(max_envs)
    return counts


def raw_collection(num_envs: int, episodes: int, seed: int, backend: str = "local") -> dict[str, float]:
    """(a): episodes/s and env steps/s of `num_envs` workers of `backend` under uniform random actions, and the
    largest worker's resident memory in MB at the end (NaN where /proc is missing) and whether torch is loaded
    there. The clock starts once the workers are up."""
    pool = open_pool(backend, num_envs, seed, is_test=False)
    try:
        start = timeit.default_timer()
        rollouts = Rollouts(pool, Observation(), episodes)
        policy = random_policy(pool.n_actions, seed, num_envs)
        steps = 0
        while not rollouts.finished:
            steps += sum(step.action is not None for step in rollouts.steps())
            rollouts.act(policy)
        seconds = timeit.default_timer() - start
        try:
            worker_mb, torch_loaded = max(resident_memory(pid) for pid in pool.pids())
        except OSError:
            worker_mb, torch_loaded = float("nan"), False
    finally:
        pool.close()
    return {
        "episodes": episodes / seconds,
        "steps": steps / seconds,
        "gradient_steps": 0.0,
        "worker_mb": worker_mb,
        "torch_in_worker": torch_loaded,
    }


def training(
    num_envs: int, episodes: int, seed: int, device: str, folder: Path, backend: str = "local"
) -> dict[str, float]:
    """(b) and (c): the throughput of a training run of `episodes` episodes, as `grasping.training.train` reports
    it (its progress bar and messages kept off this table)."""
    run = folder / f"train_{backend}_{num_envs}"
    args = parse_training_args(
        [
            "--episodes",
            str(episodes),
            "--num-envs",
            str(num_envs),
            "--device",
            device,
            "--seed",
            str(seed),
            "--checkpoint",
            str(run / "policy_dqn.pt"),
            "--logdir",
            str(run / "logs"),
            "--backend",
            backend,
        ]
    )
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), contextlib.redirect_stdout(devnull):
        result = train(args)
    if result.failure is not None:
        sys.exit(f"training with --num-envs {num_envs} failed: {result.failure}")
    return {
        "episodes": result.episodes_per_second,
        "steps": result.transitions / result.seconds,
        "gradient_steps": result.gradient_steps / result.seconds,
    }


def machine(device: torch.device) -> str:
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ", no GPU in use"
    return (
        f"{os.cpu_count()} cores ({cpu}){gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"learner on {device.type}"
    )


def measure_backend(
    backend: str, args: argparse.Namespace, device: torch.device, folder: Path
) -> dict[int, tuple[dict, dict]]:
    """(a) and (b) for every N on one backend, printed as a Markdown table as they come; {N: (raw, trained)}.
    (c), the lecture's one-environment loop, is the local backend's training at N = 1."""
    print(f"Backend: {backend}\n")
    print(
        "| N | (a) raw episodes/s | (a) env steps/s | (b) train episodes/s | (b) env steps/s "
        "| (b) gradient steps/s | (b)/(a) | (b)/(c) |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    measured: dict[int, tuple[dict, dict]] = {}
    for num_envs in env_counts(args.max_envs):
        episodes = args.episodes_per_env * num_envs
        raw = raw_collection(num_envs, episodes, args.seed, backend)
        trained = training(num_envs, episodes, args.seed, device.type, folder, backend)
        measured[num_envs] = raw, trained
        lecture = f"{trained['episodes'] / measured[1][1]['episodes']:.2f}" if backend == "local" else "-"
        print(
            f"| {num_envs} | {raw['episodes']:.3f} | {raw['steps']:.2f} | {trained['episodes']:.3f} "
            f"| {trained['steps']:.2f} | {trained['gradient_steps']:.2f} "
            f"| {trained['episodes'] / raw['episodes']:.2f} | {lecture} |",
            flush=True,
        )
    raw = measured[num_envs][0]
    print(
        f"\nEnvironment worker ({backend}): {raw['worker_mb']:.0f} MB resident after its episodes, the largest of "
        f"{num_envs}; torch loaded in it: {'yes' if raw['torch_in_worker'] else 'no'}\n"
    )
    return measured


CSV_FIELDS = (
    "backend",
    "num_envs",
    "episodes_per_env",
    "raw_episodes_per_second",
    "raw_steps_per_second",
    "train_episodes_per_second",
    "train_steps_per_second",
    "gradient_steps_per_second",
    "machine",
)


def write_csv(path: Path, tables: dict[str, dict[int, tuple[dict, dict]]], episodes_per_env: int, machine: str) -> None:
    """Append one row per backend and N to `path` (header first if the file is new)."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(CSV_FIELDS)
        for backend, measured in tables.items():
            for num_envs, (raw, trained) in measured.items():
                writer.writerow(
                    (
                        backend,
                        num_envs,
                        episodes_per_env,
                        f"{raw['episodes']:.3f}",
                        f"{raw['steps']:.2f}",
                        f"{trained['episodes']:.3f}",
                        f"{trained['steps']:.2f}",
                        f"{trained['gradient_steps']:.2f}",
                        machine,
                    )
                )


def main() -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-envs",
        type=positive_int,
        default=os.cpu_count(),
        help="largest N measured (default: the number of cores)",
    )
    parser.add_argument(
        "--episodes-per-env", type=positive_int, default=40, help="episodes counted per measurement, per environment"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="the learner's device")
    parser.add_argument("--seed", type=int, default=1, help="seed of every measurement")
    parser.add_argument(
        "--backend",
        choices=("local", "ray", "both"),
        default="local",
        help="the environment workers measured: local processes, Ray actors, or both in turn, "
        "with a table of Ray's share of the local throughput",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="also append the measurements to this CSV file (benchmarks/tables.py draws the docs' tables from it)",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)

    print(f"Machine: {machine(device)}")
    print(f"Episodes counted per measurement: {args.episodes_per_env} x N\n")
    with tempfile.TemporaryDirectory() as folder:
        tables = {
            backend: measure_backend(backend, args, device, Path(folder))
            for backend in (("local", "ray") if args.backend == "both" else (args.backend,))
        }
    if len(tables) == 2:
        print("| N | (a) ray/local | (b) ray/local |\n|--:|--:|--:|")
        for num_envs, (raw, trained) in tables["ray"].items():
            local_raw, local_trained = tables["local"][num_envs]
            print(
                f"| {num_envs} | {raw['episodes'] / local_raw['episodes']:.2f} "
                f"| {trained['episodes'] / local_trained['episodes']:.2f} |"
            )
        print()
    if args.csv is not None:
        write_csv(args.csv, tables, args.episodes_per_env, machine(device))
    lecture_bytes = 2 * 5 * 40 * 40 * 4
    for streams in sorted({1, args.max_envs}):
        memory = ReplayMemory(10_000, device, num_streams=streams)
        print(
            f"Replay memory, capacity 10,000, {streams} stream{'s' if streams > 1 else ''}: "
            f"{memory.nbytes / 1e6:.2f} MB allocated, {memory.nbytes / 10_000:.0f} bytes per transition "
            f"(the lecture's two float stacks: {lecture_bytes:,} bytes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
