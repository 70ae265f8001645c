"""The pose agent (`--agent pose`): a Q-network that knows where the gripper will end up.

With the height hack every action lowers the gripper, and the grasp is tried once it is low
enough, after GRASP_AFTER actions in most episodes. Its outcome is decided by the scene and by the
pose the arm is commanded to at that moment: x, y and the gripper's angle. That pose follows from
the actions exactly (pybullet_envs' kuka.py: fixed steps from a fixed start, x and y clamped), so
the agent plans over the poses still reachable instead of learning the kinematics from pixels.

`GraspNet` scores a final pose by the patch of the episode's first frame around the pose's
projection into the camera image, at the objects' height, and by the pose's angle. The value of a
move is the best score among the final poses reachable after it: the Monte Carlo return with
gamma 1, since the only reward comes at the episode's end. Acting greedily heads for the best
reachable pose. The agent learns from every finished episode: its first frame, its final
commanded pose and its reward.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import Observation, evaluating, to_float
from grasping.camera import camera_matrix
from grasping.checkpoints import checkpoint_agent, checkpoint_config, load_state
from grasping.cli import CheckpointError
from grasping.environment import restore_scene_generators, scene_generators
from grasping.kinematics import MOVES, START_POSE, EpisodeTracker, Pose, angle_features, move, pose_array

GRASP_AFTER = 7
"""Actions after which the descending gripper is low enough to grasp, in most episodes."""
OBJECT_HEIGHT = -0.15
"""z in metres of the objects resting in the tray, where a pose is projected into the camera image."""
PATCH_FRACTION = 3
"""A pose's patch is a 1/PATCH_FRACTION of the frame's side wide: 32 pixels at 96x96."""
MAX_PATCH_SCALES = 4
"""The most patches a GraspNet stacks: the widest is then 8 times the patch, beyond the frame on most sides."""
EXPLORATIONS = ("uniform", "boltzmann")
"""How an exploring episode draws the final pose it heads for (`PosePolicy`)."""
MAX_SCENE_RETRIES = 8
"""The most times `SceneRetries` plays a failed scene again in a row."""
POSE_CONFIG = {"agent": "pose", "image_size": 96, "rgb": True, "height": False, "patch_scales": 1, "overhead": False}
"""The pose agent as a checkpoint's `config` records it, with the pose preset's frames (a checkpoint saved before
the height channel, the wider patches or the overhead camera existed lacks their keys: they are read as here)."""


class PoseLattice:
    """The commanded poses reachable from the start within `horizon` actions, and which final poses each move
    keeps within reach.

    `reach[k][i, j]` says whether pose j is reached from pose i by exactly k actions; "stay" is an action, so
    "exactly" includes "at most". A move that leaves the lattice goes to the extra index `outside`.
    """

    def __init__(self, horizon: int = GRASP_AFTER) -> None:
        self.horizon = horizon
        self.poses: list[Pose] = [START_POSE]
        self.index: dict[Pose, int] = {START_POSE: 0}
        frontier = [START_POSE]
        for _ in range(horizon):
            reached = []
            for pose in frontier:
                for action in range(len(MOVES)):
                    after = move(pose, action)
                    if after not in self.index:
                        self.index[after] = len(self.poses)
                        self.poses.append(after)
                        reached.append(after)
            frontier = reached
        self.outside = len(self.poses)
        n = self.outside + 1
        self.successors = np.full((n, len(MOVES)), self.outside, dtype=np.int64)
        for i, pose in enumerate(self.poses):
            for action in range(len(MOVES)):
                self.successors[i, action] = self.index.get(move(pose, action), self.outside)
        self.reach: list[np.ndarray] = [np.eye(n, dtype=bool)]
        self.reach[0][self.outside, self.outside] = False
        for _ in range(horizon):
            self.reach.append(np.asarray(self.reach[-1][self.successors].any(axis=1)))
        self.finals = np.flatnonzero(self.reach[horizon][0])
        """Indices of the poses `horizon` actions can end at from the start: the candidates the agent scores."""
        self.final_poses = pose_array([self.poses[i] for i in self.finals])
        """Those candidates as `pose_array` gives them, (len(finals), 3), in `finals`' order."""

    def move_values(self, pose: Pose, actions_taken: int, scores: np.ndarray) -> np.ndarray | None:
        """For each action, the best of `scores` (one per lattice pose, the `outside` one last) over the final
        poses still reachable after it; None once the horizon is passed or the pose is off the lattice."""
        remaining = self.horizon - actions_taken - 1
        if remaining < 0 or pose not in self.index:
            return None
        reachable = self.reach[remaining][self.successors[self.index[pose]]]  # (actions, poses)
        return np.where(reachable, scores[None, :], -np.inf).max(axis=1)


def image_coordinates(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """World points (..., 3) -> where they appear in the camera image, (..., 2) in [-1, 1] as grid_sample takes
    them (align_corners=False): -1 is the left or top edge of the image, +1 the right or bottom edge."""
    clip = torch.cat((points, torch.ones_like(points[..., :1])), dim=-1) @ matrix.T
    ndc = clip[..., :2] / clip[..., 3:]
    return torch.stack((ndc[..., 0], -ndc[..., 1]), dim=-1)


def pose_coordinates(positions: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Poses' x and y in metres (..., 2) -> where they appear in the camera image at the objects' height
    (OBJECT_HEIGHT), (..., 2) as `image_coordinates` gives them: the point a pose is scored around."""
    points = torch.cat((positions, torch.full_like(positions[..., :1], OBJECT_HEIGHT)), dim=-1)
    return image_coordinates(points, matrix)


def pixel_of(points: np.ndarray, size: int, overhead: bool = False) -> np.ndarray:
    """World points (P, 3) -> (column, row) in a `size` x `size` image of the environment's camera, or of the
    overhead one, pixel j covering [j, j + 1)."""
    matrix = torch.from_numpy(camera_matrix(overhead))
    grid = image_coordinates(torch.as_tensor(points, dtype=torch.float64), matrix)
    return (grid.numpy() + 1) / 2 * size


class GraspNet(nn.Module):
    """Grasp success logits for final poses: a patch of the first frame around each pose's pixel, and its angle.

    The frame is grayscale or RGB, with or without the height channel (`Observation`). The patch (1/PATCH_FRACTION
    of the frame's side, sampled bilinearly, so sub-pixel poses are kept apart) goes through three convolutions;
    the angle enters as (sin 2a, cos 2a), since the two-finger gripper is the same turned by half a turn. With
    `patch_scales` K above 1, K - 1 more patches of the same number of samples, 2, 4, ... 2^(K-1) times as wide and
    centred alike, join it as more channels: the clutter around the pose, which the descending gripper meets.
    With `overhead` the frames are the overhead camera's, and the patches lie in its image's axes (rows along x).
    """

    def __init__(
        self,
        image_size: int = 96,
        rgb: bool = True,
        height: bool = False,
        patch_scales: int = 1,
        overhead: bool = False,
    ) -> None:
        super().__init__()
        self.image_size, self.rgb, self.height, self.patch_scales = image_size, rgb, height, patch_scales
        self.overhead = overhead
        self.patch = image_size // PATCH_FRACTION
        self.camera: torch.Tensor
        self.offsets: torch.Tensor
        self.register_buffer("camera", torch.from_numpy(camera_matrix(overhead)).float(), persistent=False)
        offsets = (torch.arange(self.patch, dtype=torch.float32) - (self.patch - 1) / 2) * 2 / image_size
        self.register_buffer(
            "offsets", torch.stack(torch.meshgrid(offsets, offsets, indexing="xy"), dim=-1), persistent=False
        )
        self.conv1 = nn.Conv2d(((3 if rgb else 1) + height) * patch_scales, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.linear = nn.Linear(64 * (self.patch // 8) ** 2 + 2, 256)
        self.head = nn.Linear(256, 1)

    def patches(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Float frames (B, C, H, W) and one (x, y) each (B, 2) -> the patches around them at each scale, the
        narrowest first (B, C * patch_scales, patch, patch); beyond the frame's edge they read 0."""
        centres = pose_coordinates(positions, self.camera)[:, None, None, :]
        grids = [centres + 2**k * self.offsets for k in range(self.patch_scales)]  # each (B, patch, patch, 2)
        return torch.cat([F.grid_sample(frames, grid, align_corners=False) for grid in grids], dim=1)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Float frames (B, C, H, W) in [0, 1] and poses (B, P, 3) as `pose_array` gives them -> logits (B, P).

        The angle does not move the patch, so each distinct (frame, x, y) goes through the convolutions once:
        the 512 final poses of an episode have 88 positions.
        """
        b, p = poses.shape[:2]
        x = torch.cat((self.patch_features(frames, poses), angle_features(poses[..., 2].reshape(-1))), dim=1)
        return self.head(F.relu(self.linear(x))).reshape(b, p)

    def patch_features(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Float frames (B, C, H, W) and poses (B, P, 3) -> the convolutions' features of each pose's patches,
        (B * P, 64 * (patch/8)^2), poses in order; each distinct (frame, x, y) is encoded once."""
        b, p = poses.shape[:2]
        frame_of = torch.arange(b, device=poses.device).repeat_interleave(p).to(poses.dtype)
        rows, inverse = torch.unique(
            torch.cat((frame_of[:, None], poses.reshape(-1, 3)[:, :2]), dim=1), dim=0, return_inverse=True
        )
        return self.encode(self.patches(frames[rows[:, 0].long()], rows[:, 1:]))[inverse]

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (N, conv1's channels, patch, patch) -> the convolutions' features, flattened: (N, 64 * (patch/8)^2)
        for GraspNet's own layers."""
        x = F.max_pool2d(F.relu(self.conv1(patches)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return x.flatten(start_dim=1)

    @property
    def config(self) -> dict[str, Any]:
        """What a checkpoint records so that `GraspNet.from_config` rebuilds this network from the file alone."""
        return {
            "agent": "pose",
            "image_size": self.image_size,
            "rgb": self.rgb,
            "height": self.height,
            "patch_scales": self.patch_scales,
            "overhead": self.overhead,
        }

    @staticmethod
    def from_config(config: dict[str, Any]) -> GraspNet:
        return GraspNet(
            config["image_size"], config["rgb"], config["height"], config["patch_scales"], config["overhead"]
        )


def pose_config(checkpoint: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """The pose agent's configuration a checkpoint records; a DQN checkpoint or a malformed one is refused."""
    saved = checkpoint.get("config", {})
    agent = saved.get("agent", "dqn") if isinstance(saved, dict) else None
    if agent != "pose":
        raise CheckpointError(f"{path}: a checkpoint of the {agent or 'unknown'} agent, not of --agent pose")
    saved = {"height": False, "patch_scales": 1, "overhead": False, **saved}
    if (
        saved.keys() != POSE_CONFIG.keys()
        or not isinstance(saved["rgb"], bool)
        or not isinstance(saved["height"], bool)
        or not isinstance(saved["overhead"], bool)
        or type(saved["image_size"]) is not int
        or saved["image_size"] < 8 * PATCH_FRACTION
        or type(saved["patch_scales"]) is not int
        or not 1 <= saved["patch_scales"] <= MAX_PATCH_SCALES
    ):
        raise CheckpointError(f"{path}: its 'config' is not a pose agent's configuration: {saved!r}")
    return dict(saved)


def saved_grasp_net(checkpoint: dict[str, Any], path: Path, device: torch.device | str = "cpu") -> GraspNet:
    """The grasp network a pose agent's checkpoint holds, rebuilt from the file alone on `device`; a DQN checkpoint
    or a malformed one is refused (CheckpointError)."""
    net = GraspNet.from_config(pose_config(checkpoint, path)).to(device)
    load_state(net, checkpoint, "policy_net_state_dict", path)
    return net


def agent_config(checkpoint: dict[str, Any], path: Any) -> tuple[str, dict[str, Any]]:
    """Which agent a checkpoint holds ("dqn" or "pose") and its network configuration, checked as that agent's."""
    agent = checkpoint_agent(checkpoint)
    return agent, pose_config(checkpoint, path) if agent == "pose" else checkpoint_config(checkpoint, path)


def newest_frames(states: np.ndarray) -> torch.Tensor:
    """The newest frame of each uint8 state (B, stack, [C,] H, W) as float (B, C, H, W), the height channel (if any)
    scaled like the colours: millimetres / 255."""
    frames = torch.from_numpy(np.ascontiguousarray(states[:, -1]))
    return to_float(frames if frames.dim() == 4 else frames.unsqueeze(1))


class PosePolicy:
    """Acting for the pose agent in a set of environments: each episode heads for a final pose.

    Call it with a batch of states, the environments they come from and their timesteps (actions taken in the
    episode so far), as the scripts call a policy. At timestep 0 it keeps the episode's first frame and scores
    every candidate final pose on it; with probability `epsilon` the episode explores instead, heading for a
    final pose drawn by `exploration`: "uniform", or "boltzmann", in proportion to exp(logit), the predicted odds
    of success, so that exploring labels the poses the greedy choice is made between (a network that has not
    learned yet scores all poses alike, and the draw is close to uniform). Each action returned is assumed
    taken: the policy follows the commanded pose. Past the horizon (the arm lagging behind its commands) each
    move is valued by the pose it leads to.
    """

    def __init__(
        self, net: GraspNet, lattice: PoseLattice, rng: random.Random | None = None, exploration: str = "uniform"
    ) -> None:
        if exploration not in EXPLORATIONS:
            raise ValueError(f"exploration {exploration!r}, not one of {EXPLORATIONS}")
        self.net, self.lattice, self.rng, self.exploration = net, lattice, rng or random.Random(0), exploration
        self.frames: dict[int, torch.Tensor] = {}
        self.episodes = EpisodeTracker()
        """Each environment's first frame of its episode (uint8, as the memory keeps it) and commanded pose."""
        self.scores: dict[int, np.ndarray] = {}
        self.exploring: dict[int, bool] = {}
        self.planned_value: dict[int, float] = {}
        """The predicted success of the final pose each episode chose at its start; NaN when it explores."""
        self.targets: dict[int, int] = {}
        """The lattice index of the final pose each episode headed for from its start."""
        self.tried: dict[int, list[int]] = {}
        """Lattice indices of final poses that an environment's next episode may not head for (`SceneRetries`)."""

    def __call__(self, states: np.ndarray, indices: list[int], timesteps: list[int], epsilon: float = 0.0) -> list[int]:
        device = next(self.net.parameters()).device
        starting = [i for i, t in enumerate(timesteps) if t == 0]
        if starting:
            frames = newest_frames(states[starting]).to(device)
            explore = [self.rng.random() < epsilon for _ in starting]
            scored = [row for row, flag in enumerate(explore) if not flag or self.exploration == "boltzmann"]
            logits = np.zeros((len(starting), len(self.lattice.finals)), dtype=np.float32)
            if scored:
                logits[scored] = self.final_logits(frames[scored]).cpu().numpy()
            values = torch.sigmoid(torch.from_numpy(logits)).numpy()
            for row, position in enumerate(starting):
                index = indices[position]
                excluded = np.isin(self.lattice.finals, self.tried.get(index, []))
                scores = np.full(self.lattice.outside + 1, -np.inf)
                if explore[row]:
                    scores[self.exploring_target(logits[row], excluded)] = 1.0
                else:
                    scores[self.lattice.finals] = np.where(excluded, -np.inf, values[row])
                self.frames[index], self.scores[index] = frames[row], scores
                self.episodes.start(index, states[position, -1])
                self.exploring[index] = explore[row]
                self.targets[index] = int(np.argmax(scores))
                self.planned_value[index] = math.nan if explore[row] else float(scores.max())
        actions = []
        for index, t in zip(indices, timesteps):
            planned = self.lattice.move_values(self.episodes.poses[index], t, self.scores[index])
            values = self.past_horizon(index) if planned is None else planned
            action = self.choose(values, index, t)
            self.episodes.moved(index, action)
            actions.append(action)
        return actions

    def final_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """Float frames (B, C, H, W) on the network's device -> the logits of every candidate final pose
        (B, len(lattice.finals)), in `lattice.finals`' order."""
        candidates = torch.from_numpy(self.lattice.final_poses)
        with evaluating(self.net):
            return self.net(frames, candidates.to(frames.device).expand(len(frames), -1, -1))

    def choose(self, values: np.ndarray, index: int, t: int) -> int:
        """The action environment `index` takes at timestep `t`, given each action's value: the first of the best."""
        return int(np.argmax(values))

    def exploring_target(self, logits: np.ndarray, excluded: np.ndarray) -> int:
        """The lattice index of the final pose an exploring episode heads for, given the logits of the final poses
        (`lattice.finals`' order; unused by "uniform"), drawn among those not `excluded` (a mask in that order)."""
        allowed, logits = self.lattice.finals[~excluded], logits[~excluded]
        if self.exploration == "uniform":
            return int(self.rng.choice(allowed))
        odds = np.exp(logits - logits.max())
        return int(self.rng.choices(allowed, weights=odds)[0])

    def past_horizon(self, index: int) -> np.ndarray:
        """Move values once the grasp is overdue: the score of the pose each move leads to (an exploring
        episode stays at its target)."""
        pose = self.episodes.poses[index]
        nexts = [move(pose, action) for action in range(len(MOVES))]
        if self.exploring[index]:
            return np.array([float(after == pose) for after in nexts])
        device = self.frames[index].device
        with evaluating(self.net):
            logits = self.net(self.frames[index][None], torch.from_numpy(pose_array(nexts)).to(device)[None])
        return logits[0].cpu().numpy()


class SceneRetries:
    """Failed scenes played again (`--retry-failed`): after an episode that lifted nothing, its environment draws the
    same scene for its next episode, up to `retries` times in a row, and the policy heads for a final pose that no
    episode of that scene has headed for: the one the greedy choice ranks next, or an exploring draw among the
    rest. So the poses the argmax picks between get labels on the scenes where it erred. Each retry is an episode
    like any other, counted, stored and learned from alike.

    The scene comes back by restoring the generators its reset drew from (`restore_scene_generators`); the physics
    is deterministic, so it is the same scene, and the environment's later scenes are those it would have drawn
    anyway. Retries owed when a run stops are not kept in its resumable state.
    """

    def __init__(self, retries: int, policy: PosePolicy) -> None:
        if not 0 < retries <= MAX_SCENE_RETRIES:
            raise ValueError(f"retries {retries}, not 1 to {MAX_SCENE_RETRIES}")
        self.retries, self.policy = retries, policy
        self.generators: dict[int, Any] = {}
        """Each environment's generator state before its current scene was drawn."""
        self.attempts: dict[int, int] = {}
        """How many times each environment's current scene has been played again."""
        self.owed: set[int] = set()
        """Environments whose next episode plays their current scene again."""

    def before_reset(self, index: int, call: Callable[..., Any]) -> None:
        """Environment `index` is about to reset; `call(function, *args)` runs `function(env, *args)` where it lives."""
        if index in self.owed:
            self.owed.discard(index)
            call(restore_scene_generators, self.generators[index])
            return
        self.generators[index] = call(scene_generators)
        self.attempts[index] = 0
        self.policy.tried[index] = []

    def episode_ended(self, index: int, reward: float) -> None:
        """Environment `index`'s episode ended with `reward`: a failure owes a retry of its scene, if any are left."""
        if index not in self.generators:
            return
        self.policy.tried[index].append(self.policy.targets[index])
        if reward <= 0 and self.attempts[index] < self.retries:
            self.attempts[index] += 1
            self.owed.add(index)


class EpisodeMemory:
    """The last `capacity` finished episodes as (first frame, final commanded pose, reward), sampled uniformly.

    A frame is kept as uint8 on `device`; the buffer grows as episodes arrive, up to `capacity`.
    """

    def __init__(
        self, capacity: int, frame_shape: tuple[int, ...], device: torch.device | str = "cpu", seed: int | None = None
    ) -> None:
        self.capacity, self.frame_shape, self.device = capacity, frame_shape, torch.device(device)
        self.frames = torch.zeros((0, *frame_shape), dtype=torch.uint8, device=self.device)
        self.poses = np.zeros((0, 3), dtype=np.float32)
        self.rewards = np.zeros(0, dtype=np.float32)
        self.pushed = 0
        self.rng = np.random.default_rng(seed)

    def push(self, frame: np.ndarray, pose: Pose, reward: float) -> None:
        """Keep one finished episode, replacing the oldest once full."""
        frame_tensor = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)[None]
        row = pose_array([pose])
        if len(self) < self.capacity:
            self.frames = torch.cat((self.frames, frame_tensor))
            self.poses = np.concatenate((self.poses, row))
            self.rewards = np.append(self.rewards, np.float32(reward))
        else:
            slot = self.pushed % self.capacity
            self.frames[slot], self.poses[slot], self.rewards[slot] = frame_tensor[0], row[0], reward
        self.pushed += 1

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`batch_size` distinct episodes: float frames (B, C, H, W), poses (B, 1, 3) and rewards (B, 1)."""
        return self.rows(self.rng.choice(len(self), size=batch_size, replace=False))

    def epoch(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every episode once, in a random order, as batches of `batch_size` (the last one may be smaller)."""
        order = self.rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            yield self.rows(order[start : start + batch_size])

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """These episodes as `sample` gives them."""
        frames = self.frames[torch.from_numpy(rows).to(self.device)]
        frames = to_float(frames if frames.dim() == 4 else frames.unsqueeze(1))
        return (
            frames,
            torch.from_numpy(self.poses[rows]).to(self.device)[:, None],
            torch.from_numpy(self.rewards[rows]).to(self.device)[:, None],
        )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on sampling the same episodes: tensors and plain data only."""
        return {
            "frames": self.frames.cpu(),
            "poses": torch.from_numpy(self.poses.copy()),
            "rewards": torch.from_numpy(self.rewards.copy()),
            "pushed": self.pushed,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take over a `state_dict` saved by a memory of the same capacity and frames; its tensors may lie on any
        device (a resumed run loads its state onto --device)."""
        if tuple(state["frames"].shape[1:]) != self.frame_shape or len(state["frames"]) > self.capacity:
            raise ValueError(
                f"saved {len(state['frames'])} episodes of frames {tuple(state['frames'].shape[1:])}, "
                f"not up to {self.capacity} of {self.frame_shape}"
            )
        self.frames = state["frames"].to(self.device)
        self.poses, self.rewards = state["poses"].cpu().numpy().copy(), state["rewards"].cpu().numpy().copy()
        self.pushed = int(state["pushed"])
        self.rng.bit_generator.state = state["rng"]

    def __len__(self) -> int:
        return len(self.rewards)


def grasp_loss(
    net: GraspNet, optimizer: torch.optim.Optimizer, frames: torch.Tensor, poses: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient step of binary cross-entropy between the predicted success of each episode's final pose and
    its reward (the Monte Carlo return, gamma 1). Returns (loss, mean predicted success), detached."""
    net.train()
    logits = net(frames, poses)
    loss = F.binary_cross_entropy_with_logits(logits, rewards)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach(), torch.sigmoid(logits).detach().mean()


class PoseAgent:
    """The pose agent's learner: a GraspNet, Adam, the memory of finished episodes, and the policy that acts in
    the training environments. It has the interface the training script drives the lecture's DQN through.

    It learns in one of two ways. Online (`refit_every` 0): a gradient step on a sampled batch whenever the
    script calls `learn`. By refits (`refit_every` N): after every N-th finished episode the network starts again
    from fresh weights and makes `refit_epochs` passes over the whole memory, so that every episode is seen as
    often as every other and no more; between refits the policy stays as it is. A stop signal interrupts a refit
    at once: the network it started from is put back, and the refit is owed to the resumed run (`catch_up`).
    """

    def __init__(
        self,
        observation: Observation,
        device: torch.device,
        seed: int,
        lr: float,
        capacity: int,
        batch_size: int,
        learning_starts: int,
        refit_every: int = 0,
        refit_epochs: int = 10,
        exploration: str = "uniform",
        patch_scales: int = 1,
        retry_failed: int = 0,
    ) -> None:
        self.net = GraspNet(
            observation.size, observation.rgb, observation.height, patch_scales, observation.overhead
        ).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.memory = EpisodeMemory(capacity, observation.frame_shape, device, seed)
        self.lattice = PoseLattice()
        self.policy = PosePolicy(self.net, self.lattice, random.Random(seed), exploration)
        self.retries = SceneRetries(retry_failed, self.policy) if retry_failed else None
        self.batch_size, self.learning_starts = batch_size, learning_starts
        self.refit_every, self.refit_epochs = refit_every, refit_epochs
        self.refit_owed = False
        """A refit was due and did not finish (a stop signal interrupted it)."""
        self.gradient_steps = 0
        """Gradient steps taken by this process, online or in refits."""

    @property
    def config(self) -> dict[str, Any]:
        return self.net.config

    def act(self, states: np.ndarray, indices: list[int], timesteps: list[int], epsilon: float) -> list[int]:
        """Each episode heads for its best predicted final pose, or with probability `epsilon` one drawn as the
        policy's `exploration` says."""
        return self.policy(states, indices, timesteps, epsilon)

    def greedy_policy(self) -> PosePolicy:
        """A greedy policy of its own (for clips), leaving the training environments' episodes alone."""
        return PosePolicy(self.net, self.lattice)

    def store(
        self, state: np.ndarray, action: int, next_state: np.ndarray | None, reward: float, stream: int = 0
    ) -> None:
        """A finished episode (`next_state` None) becomes one sample: first frame, final commanded pose, reward."""
        if next_state is None:
            self.memory.push(self.policy.episodes.first_frames[stream], self.policy.episodes.poses[stream], reward)
            if self.retries is not None:
                self.retries.episode_ended(stream, reward)

    def before_reset(self, stream: int, call: Callable[..., Any]) -> None:
        """The environment of `stream` is about to draw its next scene (`SceneRetries.before_reset`)."""
        if self.retries is not None:
            self.retries.before_reset(stream, call)

    def drop_episode(self, stream: int) -> None:
        """The environment of `stream` was lost mid-episode: nothing was stored of it (episodes are stored whole)."""

    def learn(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Online: one gradient step, once the memory holds a batch and --learning-starts episodes."""
        if self.refit_every or len(self.memory) < max(self.batch_size, self.learning_starts):
            return None
        self.gradient_steps += 1
        return grasp_loss(self.net, self.optimizer, *self.memory.sample(self.batch_size))

    def end_episode(self, i_episode: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """By refits: after every `refit_every`-th episode (once --learning-starts are in memory), refit and return
        the last pass's mean loss and mean predicted success."""
        if not self.refit_every or (i_episode + 1) % self.refit_every or len(self.memory) < self.learning_starts:
            return None
        self.refit_owed = True
        return self.catch_up()

    def catch_up(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The refit owed, if one is: due at the end of an episode, or interrupted by a stop signal before."""
        if not self.refit_owed:
            return None
        result = self.refit()
        self.refit_owed = False
        return result

    def refit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh weights and optimizer state, then `refit_epochs` passes over the memory in random order. If it is
        interrupted (Ctrl-C, SIGTERM), the network and optimizer it started from are put back."""
        before = copy.deepcopy(self.net.state_dict()), copy.deepcopy(self.optimizer.state_dict())
        try:
            for module in self.net.modules():
                if module is not self.net and isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.reset_parameters()
            self.optimizer.state.clear()
            for _ in range(self.refit_epochs):
                results = [grasp_loss(self.net, self.optimizer, *batch) for batch in self.memory.epoch(self.batch_size)]
                self.gradient_steps += len(results)
        except BaseException:
            self.net.load_state_dict(before[0])
            self.optimizer.load_state_dict(before[1])
            raise
        losses, predictions = zip(*results)
        return torch.stack(losses).mean(), torch.stack(predictions).mean()

    def resume_state(self) -> dict[str, Any]:
        """What a resumable state keeps besides the networks and the memory: whether a refit is owed."""
        return {"refit_owed": self.refit_owed}

    def networks(self) -> dict[str, Any]:
        """The checkpoint content: the network under the lecture's policy key, its optimizer, and the config."""
        return {
            "policy_net_state_dict": self.net.state_dict(),
            "optimizer_policy_net_state_dict": self.optimizer.state_dict(),
            "config": self.config,
        }

    def load(self, checkpoint: dict[str, Any], path: Any) -> None:
        load_state(self.net, checkpoint, "policy_net_state_dict", path)
        load_state(self.optimizer, checkpoint, "optimizer_policy_net_state_dict", path)
        self.refit_owed = bool(checkpoint.get("refit_owed", False))
