"""A scripted reference that cheats: it reads the objects' positions from the simulator and grasps the nearest.

    python benchmarks/scripted_reference.py                  # 200 test episodes, the learning benchmark's scenes
    python benchmarks/scripted_reference.py --episodes 20 --num-envs 1

At the start of each episode it asks the simulator where the objects are, takes the one nearest to the
gripper among those within the arm's reach (kuka.py's clamps, with a margin of one step), and heads for the
final commanded pose nearest to it with the gripper unturned: the angle is ignored. It moves with the pose
agent's lattice (grasping.pose_agent.PoseLattice), so it reaches that pose as the pose agent would reach its choice.
A learned policy that sees only the camera should beat it. The episodes are shared out over the workers as
the evaluation script shares them, so with the same --seed and --num-envs they are the learning benchmark's
scenes. Writes OUT/learning.csv, one row in the learning benchmark's format (policy "scripted"), so that its
plot draws the reference as a line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.learning import ROOT, append_row, evaluation_row
from benchmarks.simulator import gripper_and_objects
from common import Observation
from grasping.cli import OneLineArgumentParser, positive_int, report_errors, seed_int
from grasping.evaluation import play_in_parallel
from grasping.kinematics import START_POSE, X_LIMITS, Y_LIMITS, move
from grasping.pose_agent import PoseLattice
from grasping.process_pool import ProcessEnvPool

REACH_MARGIN = 60
"""Millimetres outside the clamps that an object still counts as within reach: one step of the arm."""


class NearestObject:
    """The scripted policy: each episode heads for the unturned final pose nearest to the nearest reachable
    object; with none within reach, for the one nearest to any object."""

    def __init__(self, positions: Callable[[int], tuple[np.ndarray, np.ndarray]], lattice: PoseLattice) -> None:
        """`positions(index)`: the gripper's (x, y) and each object's (N, 2) in worker `index`'s scene, in metres."""
        self.positions, self.lattice = positions, lattice
        self.finals = np.array([lattice.poses[i] for i in lattice.finals])
        self.scores: dict[int, np.ndarray] = {}
        self.poses: dict[int, tuple[int, int, int]] = {}

    def target(self, index: int) -> int:
        gripper, objects = self.positions(index)
        objects_mm = 1000 * objects
        low = np.array([X_LIMITS[0], Y_LIMITS[0]]) - REACH_MARGIN
        high = np.array([X_LIMITS[1], Y_LIMITS[1]]) + REACH_MARGIN
        within = ((objects_mm >= low) & (objects_mm <= high)).all(axis=1)
        candidates = objects_mm[within] if within.any() else objects_mm
        nearest = candidates[np.argmin(np.linalg.norm(candidates - 1000 * gripper, axis=1))]
        unturned = np.flatnonzero(self.finals[:, 2] == 0)
        best = unturned[np.argmin(np.linalg.norm(self.finals[unturned, :2] - nearest, axis=1))]
        return int(self.lattice.finals[best])

    def __call__(self, states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
        actions = []
        for index, t in zip(indices, timesteps):
            if t == 0:
                self.scores[index] = np.full(self.lattice.outside + 1, -np.inf)
                self.scores[index][self.target(index)] = 1.0
                self.poses[index] = START_POSE
            values = self.lattice.move_values(self.poses[index], t, self.scores[index])
            action = 0 if values is None else int(np.argmax(values))  # past the horizon: stay on the target
            self.poses[index] = move(self.poses[index], action)
            actions.append(action)
        return actions


def main() -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=positive_int, default=200, help="episodes to play")
    parser.add_argument("--objects", choices=("test", "train"), default="test", help="object set")
    parser.add_argument("--seed", type=seed_int, default=1000, help="seed of the scenes (the learning benchmark's)")
    parser.add_argument("--num-envs", type=positive_int, default=2, help="workers, which also choose the scenes")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "scripted-reference",
        help="folder for learning.csv",
    )
    args = parser.parse_args()

    def run() -> int:
        with ProcessEnvPool(args.num_envs, args.seed, is_test=args.objects == "test") as pool:
            policy = NearestObject(lambda index: pool.call(index, gripper_and_objects), PoseLattice())
            result = play_in_parallel(pool, Observation(), policy, args.episodes)
        print(f"Success rate: {result.success_rate()}, scripted reference on {args.objects} objects")
        args.out.mkdir(parents=True, exist_ok=True)
        append_row(args.out / "learning.csv", evaluation_row(result, "scripted", args.objects))
        return 0

    return report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
