"""Why does greedy play fail where it fails? The simulator's view of each greedy episode of a saved pose policy.

    python benchmarks/research/failure_probe.py benchmarks/results/pose-height-boltzmann-seed3/policies/episode-1000.pt

One environment in this process plays --episodes test scenes greedily (seeded by --seed, not the benchmark's
scenes). For each episode it keeps, from the simulator: the objects' positions at the reset and at the moment the
grasp begins (the environment's own check of the gripper's height), the gripper's position then, the final pose
the policy chose at the start and its predicted success, and the reward. Each episode gets one cause:
  lifted:    an object was lifted;
  pushed:    the object nearest the chosen pose at the reset moved more than PUSHED_MM before the grasp began;
  short:     the gripper began the grasp more than SHORT_MM from the chosen (x, y) (the arm lagging its commands);
  beside:    the nearest object's centre was more than BESIDE_MM from the gripper when the grasp began;
  dropped:   none of these: the gripper closed over an object and lifted nothing.
Writes to --out (benchmarks/results/failure-probe/) episodes.csv (one row per episode) and failures.png (the camera's
view of the first 24 failed scenes at the reset, the chosen pose in red and where the gripper began the grasp in
blue), and prints the causes, with the mean predicted success of each.
"""

from __future__ import annotations

import csv
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from benchmarks.learning import ROOT
from common import FrameStack, seed_everything
from grasping.checkpoints import load_checkpoint, observation_of
from grasping.cli import OneLineArgumentParser, positive_int
from grasping.environment import make_env, render_scene
from grasping.pose_agent import OBJECT_HEIGHT, PoseLattice, PosePolicy, pixel_of, saved_grasp_net

PUSHED_MM, SHORT_MM, BESIDE_MM = 10.0, 20.0, 30.0
VIEW_SIZE = 192
"""Pixels of the camera's view in failures.png."""


class GraspMoment:
    """Stands in for pybullet in the environment's module: records the objects and the gripper each time the
    environment reads the gripper's link to decide whether to grasp (once per step, before any grasp)."""

    def __init__(self, pybullet: Any, env: Any) -> None:
        self.pybullet, self.env = pybullet, env
        self.gripper: tuple[float, ...] = ()
        self.objects: list[tuple[float, ...]] = []

    def getLinkState(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (pybullet's name)
        state = self.pybullet.getLinkState(*args, **kwargs)
        self.gripper = tuple(state[0])
        self.objects = [tuple(self.pybullet.getBasePositionAndOrientation(uid)[0]) for uid in self.env._objectUids]
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pybullet, name)


def main(argv: list[str]) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a pose agent's saved policy")
    parser.add_argument("--episodes", type=positive_int, default=200, help="greedy test scenes")
    parser.add_argument("--seed", type=int, default=3000, help="seed of the scenes")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "failure-probe", help="folder for the results"
    )
    args = parser.parse_args(argv)
    saved = load_checkpoint(args.checkpoint, torch.device("cpu"), ("policy_net_state_dict",))
    net = saved_grasp_net(saved, args.checkpoint).eval()
    observation = observation_of(net.config)
    torch.set_num_threads(1)
    seed_everything(args.seed)
    env = make_env(True, 20, False, observation.camera_size, observation.height, observation.overhead)
    module: Any = sys.modules[type(env).__mro__[1].__module__]  # pybullet_envs' module of the environment
    moment = GraspMoment(module.p, env)
    module.p = moment
    lattice = PoseLattice()
    policy = PosePolicy(net, lattice)
    rows: list[dict[str, Any]] = []
    failures: list[tuple[int, np.ndarray, np.ndarray, str]] = []
    for episode in range(args.episodes):
        frames = FrameStack()
        state = frames.reset(observation.preprocess(env.reset()))
        start = [tuple(moment.pybullet.getBasePositionAndOrientation(uid)[0]) for uid in env._objectUids]
        scene = render_scene(env, VIEW_SIZE, moment.pybullet)
        done, t, reward = False, 0, 0.0
        while not done:
            action = policy(state[None], [0], [t])[0]
            if t == 0:
                target = lattice.poses[int(np.argmax(policy.scores[0]))]
                predicted = policy.planned_value[0]
            obs, reward, done, _ = env.step(action)
            state = frames.push(observation.preprocess(obs))
            t += 1
        aim = np.array(target[:2]) * 1e-3
        nearest = int(np.argmin([math.dist(aim, o[:2]) for o in start]))
        pushed = 1e3 * math.dist(start[nearest][:2], moment.objects[nearest][:2])
        short = 1e3 * math.dist(aim, moment.gripper[:2])
        beside = 1e3 * min(math.dist(moment.gripper[:2], o[:2]) for o in moment.objects)
        if reward:
            cause = "lifted"
        elif pushed > PUSHED_MM:
            cause = "pushed"
        elif short > SHORT_MM:
            cause = "short"
        elif beside > BESIDE_MM:
            cause = "beside"
        else:
            cause = "dropped"
        if not reward and len(failures) < 24:
            marks = pixel_of(np.array([[*aim, OBJECT_HEIGHT], [*moment.gripper[:2], OBJECT_HEIGHT]]), VIEW_SIZE)
            failures.append((episode, scene, marks, cause))
        rows.append(
            dict(
                episode=episode,
                reward=reward,
                cause=cause,
                predicted=round(predicted, 3),
                target_x=target[0],
                target_y=target[1],
                target_angle=target[2],
                steps=t,
                pushed_mm=round(pushed, 1),
                short_mm=round(short, 1),
                beside_mm=round(beside, 1),
            )
        )
    env.close()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "episodes.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figure = Figure(figsize=(16, 10))
    for k, (episode, scene, marks, cause) in enumerate(failures):
        axes = figure.add_subplot(4, 6, k + 1)
        axes.imshow(scene)
        axes.plot(*marks[0], "r+", markersize=14, mew=2)
        axes.plot(*marks[1], "bx", markersize=10, mew=2)
        axes.set_title(f"{episode}: {cause}", fontsize=9)
        axes.axis("off")
    figure.tight_layout()
    figure.savefig(out / "failures.png", dpi=80)
    counts = Counter(row["cause"] for row in rows)
    for cause, count in counts.most_common():
        mean = np.mean([row["predicted"] for row in rows if row["cause"] == cause])
        print(f"{cause}: {count}/{len(rows)}, mean predicted success {mean:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
