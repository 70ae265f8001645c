"""Can the lecture's network see where the gripper is relative to the objects? A supervised probe.

    python benchmarks/research/approach_probe.py                 # 1,000 random episodes, then the probes

Grasping needs the gripper over an object before it closes, so a Q-network that generalises must at
least read from its state which move brings the gripper closer to one. The uniform random policy
plays `--episodes` episodes on training objects in 2 workers. Each move (x-, x+, y-, y+) is
labelled with its approach: by how many action lengths (0.06 m) it brought the gripper closer to the
nearest object, in the tray's plane, with the objects where they were before the move. The
simulator's positions give the label; the networks see only images. The episodes are saved in
`--out` and reused by later calls with the same `--episodes` and `--seed`.

Networks learn the approach of the move taken, as their output for that action, from the state
before it, with random shifts, on a quarter, half and all of 4 episodes in 5; they are scored on the
5th by R^2 (0: no better than the held-out mean; 1: exact), best over the epochs, and on the moves
they learned from at the end, to tell memorising from reading the scene. Every input goes to the
lecture's network, or with `--network fine` to the finer one (`FineDQN`):
  stack40: the lecture's state (5 frames, 40x40 grayscale);
  rgb96: the camera at 96x96 RGB, the latest frame only;
  gray96, rgb48, gray48: that frame through the project's preprocessing in grayscale, at 48x48
  (bicubic), or both, to tell what colour and what resolution each add.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.learning import ROOT
from benchmarks.research.input_probe import in_episode_order, saved_episodes, write_rows
from benchmarks.research.probe import probe_network
from benchmarks.simulator import gripper_and_objects
from common import NETWORKS, Observation, preprocess_frame, random_shift, to_float
from grasping.cli import OneLineArgumentParser, positive_int
from grasping.evaluation import random_policy
from grasping.process_pool import ProcessEnvPool
from grasping.rollouts import Rollouts

DIRECTIONS = {1: (-1.0, 0.0), 2: (1.0, 0.0), 3: (0.0, -1.0), 4: (0.0, 1.0)}
"""x-, x+, y-, y+: the actions that move the gripper in the tray's plane, and which way."""
MOVES = tuple(DIRECTIONS)
ACTION_LENGTH = 0.06
"""Metres the environment's arm is told to move per action (KukaDiverseObjectEnv's dv)."""
REACH = ((0.50, -0.17), (0.65, 0.22))
"""The (x, y) box pybullet's arm (kuka.py) clips the gripper's target to."""
INPUTS = {"stack40": None, "gray48": (48, False), "rgb48": (48, True), "gray96": (96, False), "rgb96": (96, True)}
"""The probes' inputs: the lecture's saved state, or (size, rgb) of a frame made from the 96x96 scene."""


def nearest(objects: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from each (x, y) point to the nearest of its objects: (..., 2) points, (..., N, 2) objects."""
    return np.linalg.norm(objects - points[..., None, :], axis=-1).min(axis=-1)


def collect(episodes: int, seed: int, num_envs: int = 2) -> dict[str, np.ndarray]:
    """Random-policy episodes (`Rollouts`, a generator per worker): per move its state, the 96x96 scene, the
    action, the approach, the episode, and where the gripper and the objects were before the move, in episode
    order."""
    columns: dict[str, list] = {
        "stack40": [],
        "rgb96": [],
        "action": [],
        "approach": [],
        "episode": [],
        "gripper": [],
        "objects": [],
    }
    with ProcessEnvPool(num_envs, seed, is_test=False) as pool:
        rollouts = Rollouts(pool, Observation(), episodes)
        choose = random_policy(pool.n_actions, seed, num_envs)
        moving: list = [None] * num_envs  # a move's record until its worker replies; None after other actions

        def policy(states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
            """The random policy, noting each move's scene and positions before it is sent."""
            actions = choose(states, indices, timesteps)
            for state, index, action in zip(states, indices, actions):
                if action in MOVES:
                    gripper, objects = pool.call(index, gripper_and_objects)
                    moving[index] = dict(
                        stack40=state,
                        rgb96=pool.scene(index, 96).transpose(2, 0, 1),
                        action=action,
                        episode=rollouts.playing[index],
                        gripper=gripper,
                        objects=objects,
                    )
            return actions

        while not rollouts.finished:
            for step in rollouts.steps():
                if moving[step.env] is not None:
                    record, moving[step.env] = moving[step.env], None
                    gripper_after = pool.call(step.env, gripper_and_objects)[0]
                    record["approach"] = (
                        float(nearest(record["objects"], record["gripper"]) - nearest(record["objects"], gripper_after))
                        / ACTION_LENGTH
                    )
                    for key, value in record.items():
                        columns[key].append(value)
            rollouts.act(policy)
    data = in_episode_order(columns)
    data["approach"] = data["approach"].astype(np.float32)
    return data


def ideal_approach(data: dict[str, np.ndarray]) -> np.ndarray:
    """The approach each move would have if the gripper went exactly one action length (within its reach)."""
    steps = ACTION_LENGTH * np.array([DIRECTIONS[int(a)] for a in data["action"]])
    moved = np.clip(data["gripper"] + steps, *REACH)
    approach = (nearest(data["objects"], data["gripper"]) - nearest(data["objects"], moved)) / ACTION_LENGTH
    return approach.astype(np.float32)


def network_input(data: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """One of `INPUTS` for every move, as the network's floats (moves, channels, size, size)."""
    resized = INPUTS[name]
    if resized is None:
        return to_float(torch.from_numpy(data[name]))
    size, rgb = resized
    frames = np.stack([preprocess_frame(scene, size, rgb) for scene in data["rgb96"].transpose(0, 2, 3, 1)])
    return to_float(torch.from_numpy(frames if rgb else frames[:, None]))


def r_squared(predicted: torch.Tensor, target: torch.Tensor) -> float:
    return float(1 - ((predicted - target) ** 2).mean() / ((target - target.mean()) ** 2).mean())


def fit_approach(
    net: torch.nn.Module,
    images: torch.Tensor,
    actions: torch.Tensor,
    approach: torch.Tensor,
    train: np.ndarray,
    test: np.ndarray,
    epochs: int,
    rng: np.random.Generator,
    pad: int,
) -> tuple[list[float], float]:
    """Held-out R^2 after each epoch of training `net`'s output for the action taken, and R^2 on `train` at the end."""
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4, weight_decay=1e-4)

    def predict(index: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    net(images[index[i : i + 256]]).gather(1, actions[index[i : i + 256], None])[:, 0]
                    for i in range(0, len(index), 256)
                ]
            )

    scores = []
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train)
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            predicted = net(random_shift(images[index], pad)).gather(1, actions[index, None])[:, 0]
            loss = F.mse_loss(predicted, approach[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        scores.append(r_squared(predict(test), approach[test]))
    return scores, r_squared(predict(train), approach[train])


def main() -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=positive_int, default=1000, help="random-policy episodes to learn from")
    parser.add_argument("--epochs", type=positive_int, default=20, help="epochs of each probe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes and of the probes")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "approach-probe",
        help="folder for the episodes (episodes.npz) and the scores (approach_probe.csv, "
        "approach_probe-fine.csv with --network fine)",
    )
    parser.add_argument("--network", choices=tuple(NETWORKS), default="lecture", help="the Q-network that learns")
    parser.add_argument("--inputs", nargs="+", choices=tuple(INPUTS), default=list(INPUTS), help="the inputs to probe")
    args = parser.parse_args()
    torch.set_num_threads(2)

    data = saved_episodes(args.out, args.episodes, args.seed, collect)
    approach, actions = torch.from_numpy(data["approach"]), torch.from_numpy(data["action"]).long()
    print(
        f"{len(approach)} moves; approach per move: mean {approach.mean():.3f}, "
        f"standard deviation {approach.std():.3f} action lengths"
    )

    held_out = data["episode"] % 5 == 4
    train_all, test = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    mean_of = {a: approach[train_all][actions[train_all] == a].mean() for a in MOVES}
    by_action = torch.stack([mean_of[int(a)] for a in actions[test]])
    ideal = torch.from_numpy(ideal_approach(data))
    print(
        f"the action alone (its mean approach): held-out R^2 {r_squared(by_action, approach[test]):.3f}\n"
        f"the simulator's positions, the gripper moving one action length: held-out R^2 "
        f"{r_squared(ideal[test], approach[test]):.3f}\n\n"
        "| input | moves learned from | best held-out R^2 (epoch) | R^2 on the moves learned from | seconds |\n"
        "| --- | --: | --: | --: | --: |"
    )
    rows = []
    for name in args.inputs:
        images = network_input(data, name)
        channels, size = images.shape[1], images.shape[-1]
        for fraction in (0.25, 0.5, 1.0):
            train = train_all[data["episode"][train_all] < fraction * args.episodes]
            torch.manual_seed(args.seed)
            start = time.time()
            net = probe_network(NETWORKS[args.network], size, channels, 7)
            scores, train_score = fit_approach(
                net,
                images,
                actions,
                approach,
                train,
                test,
                args.epochs,
                np.random.default_rng(args.seed),
                pad=max(2, size // 10),
            )
            row = dict(
                input=name,
                fraction=fraction,
                train=len(train),
                test=len(test),
                best_r2=round(max(scores), 3),
                best_epoch=int(np.argmax(scores)) + 1,
                train_r2=round(train_score, 3),
                seconds=round(time.time() - start),
            )
            rows.append(row)
            print(
                f"| {name} | {len(train)} | {row['best_r2']:.3f} ({row['best_epoch']}) | {row['train_r2']:.3f} "
                f"| {row['seconds']} |",
                flush=True,
            )
    write_rows(
        args.out / ("approach_probe.csv" if args.network == "lecture" else f"approach_probe-{args.network}.csv"), rows
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
