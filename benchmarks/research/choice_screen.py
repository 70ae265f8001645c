"""How greedy play chooses among the final poses, screened on one saved policy: each variant plays the same test
scenes, and the scenes where two variants differ are counted pair by pair.

    python benchmarks/research/choice_screen.py \
        benchmarks/results/pose-height-boltzmann-seed3/policies/episode-1000.pt \
        argmax robust10 robust20 --eval-episodes 200 --eval-seed 2000

Variants (each scores a final pose; greedy play heads for the best score, as `PosePolicy` does):
  argmax:    the network's predicted success of the pose, as the agent plays;
  robustM:   its mean predicted success over the pose moved by -M, 0 and +M mm in x and in y (9 poses) and turned by
             -1/2, 0 and +1/2 of a turn step (x3): the success to expect if the arm lands near the pose, not on it
             (the commanded pose is not always reached, and a choice on a narrow peak is the one most likely wrong);
  pessimistM: the lowest predicted success over the same 27 poses;
  early:     the argmax's final pose, reached by another path: among the moves that keep it in reach, the policy
             takes a move in the tray's plane first, then a turn, and stays last (the agent stays first, so it
             moves in the plane last, when the gripper is lowest);
  replan:    the argmax, scored again on every step's newest frame among the final poses still in reach;
  ensemble:  the mean logit of this policy's network and those of the --with policies (other runs of the same
             inputs): whether independent runs' networks err on different scenes.
Appends one row per variant and scene to scenes.csv in --out (benchmarks/results/choice-screen/), and prints each
variant's successes with the 95% interval and, against the first variant, the scenes won and lost.
"""

from __future__ import annotations

import csv
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from benchmarks.learning import ROOT
from common import Observation, seed_everything
from grasping.checkpoints import load_checkpoint, observation_of
from grasping.cli import OneLineArgumentParser, positive_int
from grasping.evaluation import play_in_parallel
from grasping.kinematics import ANGLE_STEP
from grasping.pool import open_pool
from grasping.pose_agent import GraspNet, PoseLattice, PosePolicy, newest_frames, saved_grasp_net
from grasping.stats import success_rate

ANGLE_OFFSET = ANGLE_STEP / 2
"""Radians: the angle perturbation of robustM and pessimistM, half the arm's turn step."""


class Neighbourhood(nn.Module):
    """A GraspNet's logits replaced by the logit of the mean (or lowest) predicted success over each pose's
    neighbours: offsets of `mm` millimetres in x and y and of ANGLE_OFFSET in angle."""

    def __init__(self, net: GraspNet, mm: float, reduce: str) -> None:
        super().__init__()
        self.net, self.reduce = net, reduce
        steps = torch.tensor([-1.0, 0.0, 1.0])
        grid = torch.stack(torch.meshgrid(steps * mm * 1e-3, steps * mm * 1e-3, steps * ANGLE_OFFSET, indexing="ij"))
        self.offsets = grid.reshape(3, -1).T  # (27, 3)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        b, p = poses.shape[:2]
        moved = (poses[:, :, None, :] + self.offsets).reshape(b, p * len(self.offsets), 3)
        success = torch.sigmoid(self.net(frames, moved)).reshape(b, p, len(self.offsets))
        value = success.mean(dim=-1) if self.reduce == "mean" else success.min(dim=-1).values
        return torch.logit(value.clamp(1e-6, 1 - 1e-6))


class Ensemble(nn.Module):
    """Networks of the same inputs, their logits averaged: GraspNet's forward, which is all PosePolicy calls."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(frames, poses) for net in self.nets]).mean(dim=0)


class EarlyMoves(PosePolicy):
    """Among the best moves, the one that brings the planned final pose nearest (fewest actions left to reach it),
    and among those a move in the tray's plane before a turn, and a turn before staying."""

    ORDER = (1, 2, 3, 4, 5, 6, 0)

    def choose(self, values: np.ndarray, index: int, t: int) -> int:
        lattice, pose = self.lattice, self.episodes.poses[index]
        remaining = lattice.horizon - t - 1
        if remaining < 0 or pose not in lattice.index:
            return super().choose(values, index, t)
        scores = self.scores[index]
        reachable = lattice.reach[remaining + 1][lattice.index[pose]]
        target = int(np.argmax(np.where(reachable, scores, -np.inf)))
        after = lattice.successors[lattice.index[pose]]

        def steps_left(action: int) -> int:
            return next((k for k in range(remaining + 1) if lattice.reach[k][after[action], target]), remaining + 1)

        best = values.max()
        tied = [action for action in self.ORDER if values[action] == best]
        return min(tied, key=steps_left)


class Replanning(PosePolicy):
    """Greedy play that scores the final poses again on every step's newest frame up to the horizon, not only on the
    first: the descending arm may have moved the objects since. The later frames are scored by `late_net`, or by the
    network that chose on the first frame."""

    def __init__(self, net: GraspNet, lattice: PoseLattice, late_net: GraspNet | None = None) -> None:
        super().__init__(net, lattice)
        self.late = PosePolicy(late_net, lattice) if late_net is not None else self
        """Whose `final_logits` score the later frames."""

    def __call__(self, states: np.ndarray, indices: list[int], timesteps: list[int], epsilon: float = 0.0) -> list[int]:
        later = [row for row, t in enumerate(timesteps) if 0 < t < self.lattice.horizon]
        if later:
            device = next(self.late.net.parameters()).device
            logits = self.late.final_logits(newest_frames(states[later]).to(device))
            for row, values in zip(later, torch.sigmoid(logits).cpu().numpy()):
                self.scores[indices[row]][self.lattice.finals] = values
        return super().__call__(states, indices, timesteps, epsilon)


def variant_net(name: str, net: GraspNet, others: list[GraspNet]) -> nn.Module:
    if name in ("argmax", "early", "replan"):
        return net
    if name == "ensemble":
        return Ensemble([net, *others]).eval()
    if match := re.fullmatch(r"(robust|pessimist)(\d+)", name):
        return Neighbourhood(net, float(match[2]), "mean" if match[1] == "robust" else "min").eval()
    raise SystemExit(f"error: variant {name!r}: not argmax, early, replan, ensemble, robustM or pessimistM")


def play_test_scenes(policy: PosePolicy, observation: Observation, episodes: int, seed: int) -> list[float]:
    """The rewards of `policy`'s greedy episodes on the test scenes a seed fixes, in scene order (2 workers, as
    learning.py plays them)."""
    seed_everything(seed)
    with open_pool(
        "local", 2, seed, True, 20, observation.camera_size, observation.height, observation.overhead
    ) as pool:
        return play_in_parallel(pool, observation, policy, episodes).rewards


def scenes_won_lost(rewards: list[float], against: list[float]) -> tuple[int, int]:
    """In how many of the same scenes `rewards` lifted an object where `against` did not, and the other way."""
    return sum(r > a for r, a in zip(rewards, against)), sum(r < a for r, a in zip(rewards, against))


def main(argv: list[str]) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a pose agent's saved policy")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--eval-episodes", type=positive_int, default=200, help="greedy test scenes per variant")
    parser.add_argument("--eval-seed", type=int, default=2000, help="seed of the test scenes")
    parser.add_argument(
        "--with",
        dest="others",
        nargs="+",
        type=Path,
        default=[],
        metavar="CHECKPOINT",
        help="other pose agents' saved policies of the same inputs, for the ensemble variant",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "choice-screen", help="folder for scenes.csv"
    )
    args = parser.parse_args(argv)
    if "ensemble" in args.variants and not args.others:
        parser.error("variant ensemble: give the other policies with --with")
    net, *others = (
        saved_grasp_net(load_checkpoint(path, torch.device("cpu"), ("policy_net_state_dict",)), path).eval()
        for path in (args.checkpoint, *args.others)
    )
    observation = observation_of(net.config)
    for path, other in zip(args.others, others):
        if observation_of(other.config) != observation:
            raise SystemExit(f"error: --with {path}: its inputs are not those of {args.checkpoint}")
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, list[float]] = {}
    for name in args.variants:
        started = time.time()
        kind = {"early": EarlyMoves, "replan": Replanning}.get(name, PosePolicy)
        policy = kind(variant_net(name, net, others), PoseLattice())
        rewards = play_test_scenes(policy, observation, args.eval_episodes, args.eval_seed)
        outcomes[name] = rewards
        won, lost = scenes_won_lost(rewards, outcomes[args.variants[0]])
        print(
            f"{name}: {success_rate(int(sum(rewards)), len(rewards))}, against {args.variants[0]} "
            f"{won} scenes won and {lost} lost ({time.time() - started:.0f} s)",
            flush=True,
        )
        new = not (out / "scenes.csv").exists()
        with open(out / "scenes.csv", "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["checkpoint", "variant", "eval_seed", "scene", "reward"])
            checkpoint = args.checkpoint.as_posix()
            writer.writerows([checkpoint, name, args.eval_seed, i, r] for i, r in enumerate(rewards))


if __name__ == "__main__":
    main(sys.argv[1:])
