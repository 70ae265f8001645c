"""Does a larger or colour input show whether a grasp will hold? A supervised probe per input format.

    python benchmarks/research/input_probe.py                 # 1,200 random episodes, then the probes

The uniform random policy plays `--episodes` episodes on training objects in 2 workers. Every state
keeps the network's 40x40 grayscale frame and the environment's camera at 48x48 (the observation
itself) and 96x96, RGB, and is labelled with its episode's outcome (1: an object was lifted). The
episodes are saved in `--out` and reused by later calls with the same `--episodes` and `--seed`.

For each input format, two networks learn the outcome from single late frames (timestep >= t, for
each t of `--min-timestep`) of 4 episodes in 5, with random shifts, and are scored on the 5th by
the area under the ROC curve (AUC; 0.5 is chance), best and mean of the last 3 epochs:
  lecture: the lecture's convolutions (8/4, 4/2, 3/1), one hidden layer;
  spatial: 3x3 convolutions that keep a 10x10 map (12x12 from 48x48 and 96x96), one hidden layer.
"""

from __future__ import annotations

import csv
import functools
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from benchmarks.learning import ROOT
from benchmarks.research.probe import fit_outcome, probe_network
from common import DQN, Observation, to_float
from grasping.checkpoints import atomic_write
from grasping.cli import OneLineArgumentParser, positive_int
from grasping.evaluation import random_policy
from grasping.process_pool import ProcessEnvPool
from grasping.rollouts import Rollouts

SIZES = (48, 96)
"""Camera sizes kept beside the 40x40 frame: the environment's own, and twice that."""


def in_episode_order(columns: dict[str, list]) -> dict[str, np.ndarray]:
    """Collected columns as arrays, rows sorted by their "episode" column (stably: an episode's rows stay in order)."""
    order = np.argsort(columns["episode"], kind="stable")
    return {key: np.array(value)[order] for key, value in columns.items()}


def collect(episodes: int, seed: int, num_envs: int = 2) -> dict[str, np.ndarray]:
    """Random-policy episodes (`Rollouts`, a generator per worker): per state its frames, timestep, episode number
    and the episode's outcome, in episode order."""
    columns: dict[str, list] = {"gray40": [], "rgb48": [], "rgb96": [], "timestep": [], "episode": []}
    outcome_of: dict[int, float] = {}
    with ProcessEnvPool(num_envs, seed, is_test=False) as pool:
        rollouts = Rollouts(pool, Observation(), episodes)
        policy = random_policy(pool.n_actions, seed, num_envs)
        while not rollouts.finished:
            for step in rollouts.steps():
                if step.done:
                    outcome_of[step.episode] = float(step.reward)
                    continue
                if step.frame is None:  # a lost worker (none is lost on this machine)
                    continue
                columns["gray40"].append(step.frame[None])
                for size in SIZES:
                    columns[f"rgb{size}"].append(pool.scene(step.env, size).transpose(2, 0, 1))
                columns["timestep"].append(len(step.actions))
                columns["episode"].append(step.episode)
            rollouts.act(policy)
    data = in_episode_order(columns)
    data["outcome"] = np.array([outcome_of[e] for e in data["episode"]], dtype=np.float32)
    return data


def saved_episodes(
    out: Path, episodes: int, seed: int, collect: Callable[[int, int], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """`out`/episodes.npz if it holds `episodes` episodes of `seed`; otherwise `collect` them and save them there."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "episodes.npz"
    if path.exists():
        with np.load(path) as saved:
            if saved["settings"].tolist() == [episodes, seed]:
                print(f"{episodes} episodes from {path}")
                return {key: saved[key] for key in saved.files}
    start = time.time()
    data = collect(episodes, seed)
    data["settings"] = np.array([episodes, seed])
    with atomic_write(path) as file:
        np.savez(file, **data)  # type: ignore[arg-type]  # numpy's stub types the keywords as allow_pickle
    print(f"{episodes} episodes collected in {time.time() - start:.0f} s, saved in {path}")
    return data


def write_rows(path: Path, rows: list[dict]) -> None:
    """A probe's scores as CSV, written whole or not at all."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as file:
        file.write(table.getvalue().encode())


def spatial_net(channels: int, size: int) -> nn.Module:
    convolutions = nn.Sequential(
        nn.Conv2d(channels, 32, 3, 2 if size > 64 else 1, 1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, 1, 1),
        nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        features = convolutions(torch.zeros(1, channels, size, size)).shape[1]
    return nn.Sequential(convolutions, nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 1))


def main() -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=positive_int, default=1200, help="random-policy episodes to learn from")
    parser.add_argument(
        "--min-timestep",
        type=int,
        nargs="+",
        default=[4, 6],
        help="probe on the states at or after each of these timesteps",
    )
    parser.add_argument("--epochs", type=positive_int, default=15, help="epochs of each probe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes and of the probes")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "input-probe",
        help="folder for the episodes (episodes.npz) and the scores (input_probe.csv)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)

    data = saved_episodes(args.out, args.episodes, args.seed, collect)
    first = data["timestep"] == 0
    print(f"{len(data['timestep'])} states, random-policy success {data['outcome'][first].mean():.3f}")

    held_out = data["episode"] % 5 == 4
    outcome = torch.from_numpy(data["outcome"])
    rows = []
    for min_timestep in args.min_timestep:
        late = data["timestep"] >= min_timestep
        train, test = np.flatnonzero(late & ~held_out), np.flatnonzero(late & held_out)
        print(
            f"\nstates at t >= {min_timestep}: {len(train)} to learn from, {len(test)} held out\n"
            f"| input | network | best AUC | last 3 epochs | seconds |\n| --- | --- | --: | --: | --: |"
        )
        for name in ("gray40", "rgb48", "rgb96"):
            images = to_float(torch.from_numpy(data[name]))
            channels, size = images.shape[1], images.shape[-1]
            makers: tuple[tuple[str, Callable[[], nn.Module]], ...] = (
                ("lecture", functools.partial(probe_network, DQN, size, channels, 1)),
                ("spatial", functools.partial(spatial_net, channels, size)),
            )
            for kind, make in makers:
                torch.manual_seed(args.seed)
                start = time.time()
                scores = fit_outcome(
                    make(),
                    images,
                    outcome,
                    train,
                    test,
                    args.epochs,
                    np.random.default_rng(args.seed),
                    lr=3e-4,
                    weight_decay=1e-4,
                    batch_size=64,
                    pad=max(2, size // 12),
                )
                row = dict(
                    min_timestep=min_timestep,
                    input=name,
                    network=kind,
                    train=len(train),
                    test=len(test),
                    best_auc=round(max(scores), 3),
                    last3_auc=round(float(np.mean(scores[-3:])), 3),
                    seconds=round(time.time() - start),
                )
                rows.append(row)
                print(
                    f"| {name} | {kind} | {row['best_auc']:.3f} | {row['last3_auc']:.3f} | {row['seconds']} |",
                    flush=True,
                )
    write_rows(args.out / "input_probe.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
