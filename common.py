"""The lecture's pieces of DQN for KUKA grasping: the preprocessing, the frame stack, the replay memory, the
convolutional Q-network, the epsilon schedule, action selection and one optimisation step, with the opt-ins the
training flags switch on (colour and larger frames, finer convolutions, n-step and Double DQN targets, random
shifts, soft updates).

This module depends on nothing of the `grasping` package: the package builds the agents, the loops and the
environment workers on top of it.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

SCREEN_SIZE = 40
"""Side of the square grayscale screen the network sees (the lecture's; --image-size changes it)."""
CAMERA_SIZE = 48
"""Side of the environment's camera image, KukaDiverseObjectEnv's default and the lecture's."""
STACK_SIZE = 5
"""Consecutive screens in one state, as in the lecture."""
MIN_IMAGE_SIZE = 36
"""The smallest image side the lecture's three convolutions leave at least one pixel of."""
ACTION_NAMES = ("stay", "x-", "x+", "y-", "y+", "turn-", "turn+")
"""The 7 discrete actions of the environment with the height hack: the gripper descends with each."""
TIMESTEP_SCALE = 10.0
"""With --timestep-input the network gets t / TIMESTEP_SCALE: an episode lasts about 7 actions."""
POSE_FEATURES = 4
"""Numbers a commanded pose gives the network with --pose-input: x, y, and the angle as (sin 2a, cos 2a)."""


def seed_everything(seed: int) -> None:
    """Seed the global generators: the environment's (it places objects with `random` and NumPy) and torch's."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# Preprocessing and the frame stack
# ---------------------------------------------------------------------------


def preprocess_frame(obs: np.ndarray, size: int = SCREEN_SIZE, rgb: bool = False) -> np.ndarray:
    """An RGB observation (H, W, 3) uint8 -> grayscale, bicubic 40x40, uint8 of shape (40, 40).

    Divided by 255 (`to_float`) it is exactly the lecture's torchvision pipeline (ToPILImage,
    Grayscale, Resize(40, bicubic), ToTensor); kept as bytes, a frame costs 1,600 bytes in the replay memory.
    Other options give a `size` x `size` frame (resized only if the camera's differs), and with
    `rgb` the colour channels first: (3, size, size).
    """
    if obs.ndim != 3 or obs.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {obs.shape}")
    image = Image.fromarray(np.asarray(obs, dtype=np.uint8))
    if not rgb:
        image = image.convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    frame = np.array(image, dtype=np.uint8)
    return np.ascontiguousarray(frame.transpose(2, 0, 1)) if rgb else frame


@dataclass(frozen=True)
class Observation:
    """What the network sees of each camera image: a `size` x `size` frame, grayscale (the lecture's) or RGB, and
    with `height` a last channel: the height of what each pixel shows, in millimetres above the tray's floor. With
    `overhead` the images come from a second camera straight above the tray, not the environment's oblique one.

    The camera renders at the environment's 48x48, or at `size` when that is larger, so that a
    larger input holds more detail rather than an enlarged image. Checkpoints record the fields.
    """

    size: int = SCREEN_SIZE
    rgb: bool = False
    height: bool = False
    overhead: bool = False

    @property
    def camera_size(self) -> int:
        return max(CAMERA_SIZE, self.size)

    @property
    def channels(self) -> int:
        return (3 if self.rgb else 1) + self.height

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size) if self.channels > 1 else (self.size, self.size)

    def preprocess(self, obs: np.ndarray) -> np.ndarray:
        """A camera image (H, W, 3), or (H, W, 4) with the height channel, as this observation's uint8 frame."""
        if not self.height:
            return preprocess_frame(obs, self.size, self.rgb)
        if obs.ndim != 3 or obs.shape[2] != 4:
            raise ValueError(f"expected an image with its height channel, of shape (H, W, 4), got {obs.shape}")
        colour = preprocess_frame(obs[:, :, :3], self.size, self.rgb)
        height = Image.fromarray(np.ascontiguousarray(obs[:, :, 3]))
        if height.size != (self.size, self.size):
            height = height.resize((self.size, self.size), Image.Resampling.NEAREST)
        return np.concatenate((colour.reshape(-1, self.size, self.size), np.array(height, dtype=np.uint8)[None]))


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> the network's input, float32 in [0, 1]; stacked colour frames (B, STACK_SIZE, 3, H, W)
    become (B, 3 * STACK_SIZE, H, W), a frame's channels side by side."""
    if frames.dim() == 5:
        frames = frames.flatten(1, 2)
    return frames.float().div_(255.0)


class FrameStack:
    """The last `size` preprocessed frames as one state, uint8 of shape (size, 40, 40) with the lecture's frames;
    an episode starts from `size` copies of its first frame, as in the lecture."""

    def __init__(self, size: int = STACK_SIZE) -> None:
        self.size = size
        self.frames: deque[np.ndarray] = deque(maxlen=size)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        self.frames.extend([frame] * self.size)
        return self.state()

    def push(self, frame: np.ndarray) -> np.ndarray:
        self.frames.append(frame)
        return self.state()

    def state(self) -> np.ndarray:
        return np.stack(self.frames)


# ---------------------------------------------------------------------------
# Replay memory
# ---------------------------------------------------------------------------

PoseFeatures = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(actions (B, H) int64, counts (B,) int64) -> float32 (B, POSE_FEATURES): the network's pose input after the
first counts[b] actions of each row's episode (the package's kinematics gives one)."""


class Batch(NamedTuple):
    """Sampled transitions as tensors on the memory's device, B of them.

    `state` and `next_state` are uint8 (B, STACK_SIZE, *frame shape), or (B, 1 + STACK_SIZE, ...) with the
    episode's first frame ahead of the stack; a terminal transition's `next_state` is meaningless. `action`,
    `timestep` and `next_timestep` (actions taken before `state` and before `next_state`) are int64 (B,),
    `reward` float32 (B,), `done` bool (B,). With pose features, `pose` and `next_pose` are float32
    (B, POSE_FEATURES) at both states; otherwise None.
    """

    state: torch.Tensor
    action: torch.Tensor
    next_state: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    timestep: torch.Tensor
    next_timestep: torch.Tensor
    pose: torch.Tensor | None = None
    next_pose: torch.Tensor | None = None


class ReplayMemory:
    """The last `capacity` transitions, sampled uniformly, each frame stored once as uint8 on `device`.

    A transition costs one frame (1,600 bytes with the lecture's 40x40) and a few bytes more, against 64 KB for
    the lecture's two float stacks. States are rebuilt from the frames their stream stored before them, so
    transitions arrive in `streams` (one per environment), each in the order it happened, and each stream
    keeps its share of the capacity, as Stable-Baselines3 does with several environments. With `first_frame`
    each state carries its episode's first frame; with `pose_features` the batch carries the network's pose
    input, computed from the actions since the episode's start; either keeps `max_episode_steps` spare slots.
    """

    def __init__(
        self,
        capacity: int,
        device: torch.device | str = "cpu",
        num_streams: int = 1,
        seed: int | None = None,
        frame_shape: tuple[int, ...] = (SCREEN_SIZE, SCREEN_SIZE),
        first_frame: bool = False,
        pose_features: PoseFeatures | None = None,
        max_episode_steps: int = 20,
    ) -> None:
        """`frame_shape` is one preprocessed frame's (`Observation.frame_shape`), the lecture's by default."""
        if capacity < num_streams:
            raise ValueError(f"capacity {capacity} is smaller than the number of streams {num_streams}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.first_frame, self.pose_features = first_frame, pose_features
        self.shares = np.array([capacity // num_streams + (s < capacity % num_streams) for s in range(num_streams)])
        # Spare slots keep the frames of the oldest transition's state (or episode) alive while the
        # newest next frame is written.
        whole_episodes = first_frame or pose_features is not None
        self.history = max(STACK_SIZE, max_episode_steps) if whole_episodes else STACK_SIZE
        self.slots = int(self.shares.max()) + self.history
        self.frames = torch.zeros((num_streams, self.slots, *frame_shape), dtype=torch.uint8, device=self.device)
        self.actions = np.zeros((num_streams, self.slots), dtype=np.int64)
        self.rewards = np.zeros((num_streams, self.slots), dtype=np.float32)
        self.dones = np.zeros((num_streams, self.slots), dtype=bool)
        self.episode_starts = np.zeros((num_streams, self.slots), dtype=np.int64)
        """Step number, within its stream, of the first transition of each transition's episode."""
        self.pushed = np.zeros(num_streams, dtype=np.int64)
        self.oldest = np.zeros(num_streams, dtype=np.int64)
        """Step number of each stream's oldest transition still held."""
        self._last_next_state: list[np.ndarray | None] = [None] * num_streams
        self._episode_start = np.zeros(num_streams, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def push(
        self, state: np.ndarray, action: int, next_state: np.ndarray | None, reward: float, stream: int = 0
    ) -> None:
        """Save a transition; `next_state` is None when it ended the episode. Overwrites the stream's oldest.

        A state must be its stream's previous `next_state` or, after a terminal transition, copies
        of one first frame, as `FrameStack` makes them.
        """
        step = int(self.pushed[stream])
        slot = step % self.slots
        previous = self._last_next_state[stream]
        if previous is None:
            if not (state == state[-1]).all():
                raise ValueError(f"stream {stream}: an episode's first state must be copies of its first frame")
            self._episode_start[stream] = step
            self.frames[stream, slot] = torch.from_numpy(state[-1]).to(self.device)
        elif not np.array_equal(state, previous):
            raise ValueError(f"stream {stream}: the state is not the next_state of the stream's last transition")
        if next_state is not None:
            if not np.array_equal(next_state[:-1], state[1:]):
                raise ValueError(f"stream {stream}: next_state must be the state shifted by one new frame")
            self.frames[stream, (step + 1) % self.slots] = torch.from_numpy(next_state[-1]).to(self.device)
        self.actions[stream, slot] = action
        self.rewards[stream, slot] = reward
        self.dones[stream, slot] = next_state is None
        self.episode_starts[stream, slot] = self._episode_start[stream]
        self._last_next_state[stream] = next_state
        self.pushed[stream] = step + 1
        self.oldest[stream] = max(self.oldest[stream], step + 1 - self.shares[stream])

    def drop_unfinished(self, stream: int) -> None:
        """Forget the stream's unfinished episode (its environment was lost), as a resumed memory does."""
        if self._last_next_state[stream] is not None:
            self.pushed[stream] = self._episode_start[stream]
            self.oldest[stream] = min(self.oldest[stream], self.pushed[stream])
            self._last_next_state[stream] = None

    def sampleable(self, n_step: int = 1) -> int:
        """Transitions `sample` can draw from: a stream's newest n_step - 1 wait for the steps after them."""
        return int(np.maximum(self.pushed - self.oldest - (n_step - 1), 0).sum())

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 1.0) -> Batch:
        """`batch_size` distinct transitions drawn uniformly, gathered by index on the device.

        With n_step > 1 each becomes an n-step transition: `reward` is the return
        r_t + gamma r_t+1 + ... over n steps or up to the episode's end, `next_state` the state n
        steps on, and `done` whether the episode ended within them. n_step = 1 is the lecture's.
        """
        ready = np.maximum(self.pushed - self.oldest - (n_step - 1), 0)  # (streams,) transitions each can give
        if batch_size > ready.sum():
            raise ValueError(f"cannot sample {batch_size} transitions from a memory with {ready.sum()} ready")
        ends = np.cumsum(ready)  # the streams' ready transitions laid end to end: stream s ends at ends[s]
        flat = self.rng.choice(ends[-1], size=batch_size, replace=False)  # (B,) positions in that line
        stream = np.searchsorted(ends, flat, side="right")  # (B,) the stream each position falls in
        return self.gather(stream, self.oldest[stream] + flat - (ends - ready)[stream], n_step, gamma)

    def gather(self, stream: np.ndarray, step: np.ndarray, n_step: int, gamma: float) -> Batch:
        """The n-step transitions at these (stream, step within the stream) pairs, held in memory, on the device.

        `stream` and `step` are int64 (B,). Steps count from each stream's first push; a step's slot is
        step % slots. Frames are stored once: the state at step t is the frames of steps t-4 .. t, and the
        next state n steps on is those of t+n-4 .. t+n (the frame of step k being the one `state` held last).
        """
        batch_size = len(step)
        slot = step % self.slots  # (B,)

        # The n steps from each transition on: (B, n). A step counts towards the return until the first
        # terminal one, which it includes: before_end[b, k] is whether no step before k ended the episode.
        ahead = (step[:, None] + np.arange(n_step)) % self.slots  # (B, n) slots
        dones = self.dones[stream[:, None], ahead]  # (B, n)
        before_end = np.cumprod(np.hstack((np.ones((batch_size, 1), bool), ~dones[:, :-1])), axis=1).astype(bool)
        discounts = gamma ** np.arange(n_step)  # (n,)
        rewards = (self.rewards[stream[:, None], ahead] * before_end * discounts).sum(axis=1).astype(np.float32)

        # The frames of each state and next state: (B, STACK_SIZE) steps, oldest first. Steps from before the
        # episode's first one are replaced by it, as FrameStack repeats the first frame.
        back = np.arange(STACK_SIZE - 1, -1, -1)  # (STACK_SIZE,): 4, 3, 2, 1, 0
        first = self.episode_starts[stream, slot][:, None]  # (B, 1) step of the episode's first transition
        state_steps = np.maximum(step[:, None] - back, first)  # (B, STACK_SIZE)
        next_steps = np.maximum(step[:, None] + n_step - back, first)  # (B, STACK_SIZE)
        if self.first_frame:  # the episode's first frame leads: (B, 1 + STACK_SIZE)
            state_steps, next_steps = np.hstack((first, state_steps)), np.hstack((first, next_steps))
        index = torch.from_numpy(np.stack((state_steps, next_steps)) % self.slots).to(self.device)  # (2, B, S)
        frames = self.frames[torch.from_numpy(stream).to(self.device)[:, None], index]  # (2, B, S, *frame shape)
        timestep, next_timestep = step - first[:, 0], step + n_step - first[:, 0]  # (B,) actions taken before
        pose = next_pose = None
        if self.pose_features is not None:  # from the episode's actions: (B, history + n) from its first step
            taken = self.actions[stream[:, None], (first + np.arange(self.history + n_step)) % self.slots]
            pose = torch.from_numpy(self.pose_features(taken, timestep)).to(self.device)  # (B, POSE_FEATURES)
            next_pose = torch.from_numpy(self.pose_features(taken, next_timestep)).to(self.device)
        return Batch(
            state=frames[0],
            action=torch.from_numpy(self.actions[stream, slot]).to(self.device),
            next_state=frames[1],
            reward=torch.from_numpy(rewards).to(self.device),
            done=torch.from_numpy((dones & before_end).any(axis=1)).to(self.device),  # ended within the n steps
            timestep=torch.from_numpy(timestep).to(self.device),
            next_timestep=torch.from_numpy(next_timestep).to(self.device),
            pose=pose,
            next_pose=next_pose,
        )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on sampling the same transitions: tensors and plain data only; an
        unfinished episode is left out (its environment starts a new one on resume)."""
        unfinished = np.array([state is not None for state in self._last_next_state])
        pushed = np.where(unfinished, self._episode_start, self.pushed)
        arrays: dict[str, np.ndarray] = dict(
            actions=self.actions,
            rewards=self.rewards,
            dones=self.dones,
            episode_starts=self.episode_starts,
            pushed=pushed,
            oldest=np.minimum(self.oldest, pushed),
        )
        return {
            "frames": self.frames.cpu(),
            **{key: torch.from_numpy(value.copy()) for key, value in arrays.items()},
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take over a `state_dict` saved by a memory of the same capacity and number of streams; its tensors may
        lie on any device (a resumed run loads its state onto --device)."""
        if tuple(state["frames"].shape) != tuple(self.frames.shape):
            raise ValueError(
                f"saved for {state['frames'].shape[0]} stream(s) of {state['frames'].shape[1]} slots, "
                f"not {self.frames.shape[0]} of {self.frames.shape[1]}"
            )
        self.frames.copy_(state["frames"])
        for key in ("actions", "rewards", "dones", "episode_starts", "pushed", "oldest"):
            getattr(self, key)[...] = state[key].cpu().numpy()
        self.rng.bit_generator.state = state["rng"]
        self._last_next_state = [None] * len(self._last_next_state)

    @property
    def nbytes(self) -> int:
        """Bytes the memory holds, allocated in full up front."""
        return self.frames.nbytes + sum(a.nbytes for a in (self.actions, self.rewards, self.dones, self.episode_starts))

    def __len__(self) -> int:
        return int((self.pushed - self.oldest).sum())


# ---------------------------------------------------------------------------
# Q-network
# ---------------------------------------------------------------------------


def conv2d_size_out(size: int, kernel_size: int, stride: int, padding: int = 0) -> int:
    """n_out = floor((n_in + 2p - k) / s) + 1, the lecture's convolution output size."""
    return (size + 2 * padding - kernel_size) // stride + 1


class DQN(nn.Module):
    """The lecture's Q-network: three convolutions (BatchNorm on the first two), one hidden layer. Layer names
    match the lecture, so its state dicts load here with strict=True and back.

    Opt-in: `timestep_input` feeds the episode's timestep to the hidden layer (the slides' state includes t,
    the lecture's code does not); `rgb` takes colour frames, three channels each; `first_frame_input` puts
    the episode's first frame ahead of the stack, and `pose_input` the commanded pose (POSE_FEATURES numbers)
    beside the image features: what the pose agent knows.
    """

    network = "lecture"
    """How `--network` and a checkpoint's `config` name this class's convolutions."""

    def __init__(
        self,
        h: int,
        w: int,
        outputs: int,
        timestep_input: bool = False,
        rgb: bool = False,
        first_frame_input: bool = False,
        pose_input: bool = False,
    ) -> None:
        super().__init__()
        self.timestep_input, self.first_frame_input, self.pose_input = timestep_input, first_frame_input, pose_input
        self.rgb, self.image_size = rgb, h
        frames = STACK_SIZE + int(first_frame_input)
        features = self.build_convolutions(frames * (3 if rgb else 1), h, w)
        self.linear = nn.Linear(features + int(timestep_input) + POSE_FEATURES * int(pose_input), 512)
        self.head = nn.Linear(512, outputs)

    def build_convolutions(self, in_channels: int, h: int, w: int) -> int:
        """The image layers; returns how many features they give the hidden layer."""
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=8, stride=4)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=4, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=1)
        convw = conv2d_size_out(conv2d_size_out(conv2d_size_out(w, 8, 4), 4, 2), 3, 1)
        convh = conv2d_size_out(conv2d_size_out(conv2d_size_out(h, 8, 4), 4, 2), 3, 1)
        return convw * convh * 64

    def convolutions(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.relu(self.conv3(x))

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor | None = None, pose: torch.Tensor | None = None
    ) -> torch.Tensor:
        """States (B, channels, h, w), with `timestep_input` their timesteps (B,), with `pose_input` their
        pose features (B, POSE_FEATURES) -> Q-values (B, outputs)."""
        x = self.convolutions(x).flatten(start_dim=1)
        if self.timestep_input:
            if timestep is None:
                raise ValueError("this network takes the timestep as an input: pass it")
            x = torch.cat((x, timestep.to(x.dtype).unsqueeze(1) / TIMESTEP_SCALE), dim=1)
        if self.pose_input:
            if pose is None:
                raise ValueError("this network takes the commanded pose as an input: pass it")
            x = torch.cat((x, pose.to(x.dtype)), dim=1)
        x = F.relu(self.linear(x))
        return self.head(x)

    @property
    def config(self) -> dict[str, Any]:
        """What a checkpoint records so that `DQN.from_config` rebuilds this network from the file alone."""
        return {
            "timestep_input": self.timestep_input,
            "image_size": self.image_size,
            "rgb": self.rgb,
            "network": self.network,
            "first_frame_input": self.first_frame_input,
            "pose_input": self.pose_input,
        }

    @classmethod
    def for_observation(
        cls,
        observation: Observation,
        outputs: int,
        timestep_input: bool = False,
        first_frame_input: bool = False,
        pose_input: bool = False,
    ) -> DQN:
        """This class's network for stacks of `observation`'s frames."""
        return cls(
            observation.size,
            observation.size,
            outputs,
            timestep_input,
            observation.rgb,
            first_frame_input=first_frame_input,
            pose_input=pose_input,
        )

    @staticmethod
    def from_config(config: dict[str, Any], outputs: int) -> DQN:
        """The network a checkpoint's `config` (as `checkpoint_config` reads it) describes."""
        observation = Observation(config["image_size"], config["rgb"])
        return NETWORKS[config["network"]].for_observation(
            observation, outputs, config["timestep_input"], config["first_frame_input"], config["pose_input"]
        )


class FineDQN(DQN):
    """The lecture's network with finer convolutions (opt-in, `--network fine`): 3x3 and 4x4 kernels, strides
    2, 1, 2, 2, BatchNorm on the first three, so the hidden layer sees a 6x6 grid at 48x48 where the lecture's
    sees 2x2 (1x1 at its 40x40): grasping hinges on where the gripper is against the objects, a few pixels apart."""

    network = "fine"

    def build_convolutions(self, in_channels: int, h: int, w: int) -> int:
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=4, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1)
        sizes = [
            conv2d_size_out(conv2d_size_out(conv2d_size_out(conv2d_size_out(side, 4, 2, 1), 3, 1, 1), 3, 2, 1), 3, 2, 1)
            for side in (h, w)
        ]
        return sizes[0] * sizes[1] * 64

    def convolutions(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return F.relu(self.conv4(x))


NETWORKS: dict[str, type[DQN]] = {cls.network: cls for cls in (DQN, FineDQN)}
"""The Q-networks `--network` chooses from, by the name a checkpoint's `config` records."""


# ---------------------------------------------------------------------------
# Acting and learning
# ---------------------------------------------------------------------------


def epsilon_by_episode(i_episode: int, eps_start: float, eps_end: float, decay_last_frame: int) -> float:
    """The lecture's schedule: linear from eps_start at episode 0, floored at eps_end."""
    return max(eps_end, eps_start - i_episode / decay_last_frame)


@contextlib.contextmanager
def evaluating(net: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block (BatchNorm uses its running statistics, as when acting); the
    network's mode is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was_training)


def greedy_actions(
    policy_net: nn.Module, states: np.ndarray, timesteps: list[int] | None = None, poses: np.ndarray | None = None
) -> list[int]:
    """argmax_a Q(state, a) for a batch of uint8 states (and their timesteps, and pose features (B, POSE_FEATURES)),
    in one forward pass, in eval mode."""
    device = next(policy_net.parameters()).device
    timestep = None if timesteps is None else torch.tensor(timesteps, device=device)
    pose = None if poses is None else torch.from_numpy(poses).to(device)
    with evaluating(policy_net):
        return policy_net(to_float(torch.from_numpy(states).to(device)), timestep, pose).argmax(dim=1).tolist()


def random_shift(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random-shift augmentation (DrQ): pad by repeating the border, crop back at a random offset per image.
    Float images (B, C, H, W) in, the same shape out; draws from torch's global generator."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=images.device)
    rows = torch.arange(h, device=images.device)[None, :, None] + dy
    cols = torch.arange(w, device=images.device)[None, None, :] + dx
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def soft_update(target_net: nn.Module, policy_net: nn.Module, tau: float) -> None:
    """Polyak averaging, target = tau * policy + (1 - tau) * target, BatchNorm's running statistics included."""
    with torch.no_grad():
        for target, source in zip(target_net.state_dict().values(), policy_net.state_dict().values()):
            if target.is_floating_point():
                target.lerp_(source, tau)
            else:
                target.copy_(source)


def select_actions(
    policy_net: nn.Module,
    states: np.ndarray,
    epsilon: float,
    n_actions: int,
    rng: random.Random,
    timesteps: list[int] | None = None,
    poses: np.ndarray | None = None,
) -> list[int]:
    """Epsilon-greedy for each state: uniform with probability epsilon, else greedy (one batched pass)."""
    explore = [rng.random() <= epsilon for _ in range(len(states))]
    greedy = greedy_actions(policy_net, states, timesteps, poses) if not all(explore) else []
    return [rng.randrange(n_actions) if explore[i] else greedy[i] for i in range(len(states))]


def optimize_model(
    policy_net: nn.Module,
    target_net: nn.Module,
    optimizer: torch.optim.Optimizer,
    memory: ReplayMemory,
    batch_size: int,
    gamma: float,
    n_step: int = 1,
    double_dqn: bool = False,
    augment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One gradient step on a sampled batch: Huber loss against r + gamma * max_a' Q_target(s', a').

    A terminal next state is worth 0. The lecture's step is the default; opt-in, `n_step` bootstraps n steps on
    from the discounted return in between (gamma**n on the next value), `double_dqn` lets the policy network
    pick a' and the target network value it, `augment` shifts states and next states at random. Returns
    (loss, mean Q(s, a)) as detached tensors, or None while the memory cannot yet give a batch.
    """
    if memory.sampleable(n_step) < batch_size:
        return None
    batch = memory.sample(batch_size, n_step, gamma)
    state, next_state = to_float(batch.state), to_float(batch.next_state)
    if augment:
        state, next_state = random_shift(state), random_shift(next_state)

    pose, next_pose = batch.pose, batch.next_pose
    with torch.no_grad():
        next_q = target_net(next_state, batch.next_timestep, next_pose)
        if double_dqn:
            with evaluating(policy_net):
                next_action = policy_net(next_state, batch.next_timestep, next_pose).argmax(dim=1, keepdim=True)
            next_state_values = next_q.gather(1, next_action).squeeze(1)
        else:
            next_state_values = next_q.max(dim=1).values
    expected_state_action_values = batch.reward + gamma**n_step * next_state_values.masked_fill(batch.done, 0.0)

    policy_net.train()
    state_action_values = policy_net(state, batch.timestep, pose).gather(1, batch.action.unsqueeze(1))

    loss = F.smooth_l1_loss(state_action_values, expected_state_action_values.unsqueeze(1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(policy_net.parameters(), 1.0)
    optimizer.step()
    return loss.detach(), state_action_values.detach().mean()
