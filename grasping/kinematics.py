"""The arm's commanded pose, which follows from the actions exactly (pybullet_envs' kuka.py).

With the height hack every action lowers the gripper and moves its commanded x, y or angle by a fixed
step from a fixed start, x and y clamped to the tray. Both agents use this: the pose agent plans over
the poses reachable, and the DQN may take the commanded pose as an input (--pose-input).
"""

from __future__ import annotations

import numpy as np
import torch

MOVES = ((0, 0, 0), (-60, 0, 0), (60, 0, 0), (0, -60, 0), (0, 60, 0), (0, 0, -1), (0, 0, 1))
"""Each action's change of the commanded pose: x and y in millimetres (dv = 0.06 m), angle in ANGLE_STEPs."""
START_POSE = (537, 0, 0)
"""The commanded pose at reset: x, y in millimetres, angle in ANGLE_STEPs (kuka.py's endEffectorPos, Angle)."""
X_LIMITS, Y_LIMITS = (500, 650), (-170, 220)
"""kuka.py clamps the commanded x and y to these, in millimetres; the angle is not clamped."""
ANGLE_STEP = 0.25
"""Radians the gripper turns per turn action."""

Pose = tuple[int, int, int]
"""A commanded pose: x and y in millimetres, the angle in ANGLE_STEPs."""


def move(pose: Pose, action: int) -> Pose:
    """The commanded pose after `action`, clamped as kuka.py clamps it."""
    dx, dy, dturn = MOVES[action]
    return (
        min(max(pose[0] + dx, X_LIMITS[0]), X_LIMITS[1]),
        min(max(pose[1] + dy, Y_LIMITS[0]), Y_LIMITS[1]),
        pose[2] + dturn,
    )


def poses_after(actions: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The commanded pose after the first counts[b] actions of each row of `actions` (B, H), from the start:
    int64 (B, 3) in `Pose` units. `move` for a batch of episodes at once."""
    steps = np.asarray(MOVES)[actions] * (np.arange(actions.shape[1]) < counts[:, None])[..., None]
    poses = np.tile(np.asarray(START_POSE), (len(actions), 1))
    for k in range(actions.shape[1]):  # the clamps make the order matter: one action after the other
        poses += steps[:, k]
        np.clip(poses[:, 0], *X_LIMITS, out=poses[:, 0])
        np.clip(poses[:, 1], *Y_LIMITS, out=poses[:, 1])
    return poses


def pose_array(poses: list[Pose]) -> np.ndarray:
    """Poses as float32 rows (x m, y m, angle rad), the pose agent's input."""
    array = np.asarray(poses, dtype=np.float32).reshape(-1, 3)
    return array * np.array([1e-3, 1e-3, ANGLE_STEP], dtype=np.float32)


def angle_features(angle: torch.Tensor) -> torch.Tensor:
    """Gripper angles in radians (...) -> (..., 2): (sin 2a, cos 2a), since the two-fingered gripper is the same
    turned by half a turn."""
    return torch.stack((torch.sin(2 * angle), torch.cos(2 * angle)), dim=-1)


class EpisodeTracker:
    """What a policy acting in several environments keeps of each one's episode so far: its first frame and the
    commanded pose, which it follows from the actions it returns (each assumed taken)."""

    def __init__(self) -> None:
        self.first_frames: dict[int, np.ndarray] = {}
        self.poses: dict[int, Pose] = {}

    def start(self, index: int, first_frame: np.ndarray) -> None:
        """Environment `index` has begun an episode with this frame."""
        self.first_frames[index], self.poses[index] = first_frame.copy(), START_POSE

    def moved(self, index: int, action: int) -> None:
        """Environment `index` has been given `action`."""
        self.poses[index] = move(self.poses[index], action)


def pose_features(poses: np.ndarray) -> np.ndarray:
    """Poses (B, 3) in `Pose` units -> float32 (B, POSE_FEATURES) of order 1, a DQN's input (--pose-input): x and
    y scaled over their clamps to [-1, 1], and the angle's `angle_features`."""
    values = torch.from_numpy(np.asarray(poses, dtype=np.float64).reshape(-1, 3))
    x = (values[:, 0] - sum(X_LIMITS) / 2) / ((X_LIMITS[1] - X_LIMITS[0]) / 2)
    y = (values[:, 1] - sum(Y_LIMITS) / 2) / ((Y_LIMITS[1] - Y_LIMITS[0]) / 2)
    features = torch.cat((torch.stack((x, y), dim=1), angle_features(ANGLE_STEP * values[:, 2])), dim=1)
    return features.float().numpy()


def pose_features_after(actions: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The DQN's pose input after the first counts[b] actions of each row of `actions` (B, H): float32
    (B, POSE_FEATURES), as the replay memory gathers it (common.PoseFeatures)."""
    return pose_features(poses_after(actions, counts))
