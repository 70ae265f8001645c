"""What the training and evaluation scripts share: the lecture's DQN for KUKA grasping.

Preprocessing, the frame stack, the replay memory, the convolutional Q-network, the
pybullet environment, the epsilon schedule, action selection, one optimisation step and
checkpoints. Scripts hold the loops; this module holds no script logic.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import pickle
import random
import re
import secrets
import sys
import warnings
import zipfile
from collections import deque, namedtuple
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

STACK_SIZE = 5
"""Consecutive screens in one state, as in the lecture."""
SCREEN_SIZE = 40
"""Side of the square grayscale screen the network sees."""
CHECKPOINT_KEYS = ("policy_net_state_dict", "target_net_state_dict", "optimizer_policy_net_state_dict")
"""The lecture's checkpoint keys; checkpoints written here always carry them."""


class UsageError(Exception):
    """Bad input the user can fix. Scripts print it as one line and exit non-zero."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the network."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when a GPU is usable; asking for 'cuda' without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no usable CUDA GPU here (torch.cuda.is_available() is False); use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed the global generators: the environment places objects with `random` and NumPy's global RNG."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _silenced_output() -> Iterator[None]:
    """Send stdout and stderr, C-level prints included, to /dev/null for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@functools.cache
def _grasp_env_class() -> type:
    """Import pybullet's KukaDiverseObjectEnv once, quietly, and return our thin subclass of it.

    The import prints pybullet's build time, a `current_dir=` line, gym's NumPy 2 notice and a
    pkg_resources deprecation warning; none of them is an error, so they are kept off the
    user's terminal. A missing pkg_resources (setuptools 81 and later) is reported plainly.
    """
    try:
        with warnings.catch_warnings(), _silenced_output():
            warnings.simplefilter("ignore")
            from pybullet_envs.bullet.kuka_diverse_object_gym_env import KukaDiverseObjectEnv
    except ModuleNotFoundError as error:
        if error.name == "pkg_resources":
            raise UsageError(
                "pybullet_envs needs pkg_resources, which setuptools 81 and later no longer ship: "
                "pip install 'setuptools<81'"
            ) from None
        raise
    import pybullet

    class KukaGraspEnv(KukaDiverseObjectEnv):
        """pybullet's class, unchanged but for a close() that disconnects its physics server once.

        The parent's __del__ disconnects the global client unconditionally: after an explicit
        disconnect it prints "Not connected to physics server", and since pybullet reuses client
        ids it could even disconnect a newer environment in the same process.
        """

        def close(self) -> None:
            if not getattr(self, "_disconnected", False) and hasattr(self, "cid"):
                self._disconnected = True
                if pybullet.isConnected(self.cid):
                    pybullet.disconnect(self.cid)

        def __del__(self) -> None:
            self.close()

    return KukaGraspEnv


def make_env(is_test: bool, max_steps: int = 20) -> Any:
    """The lecture's environment: 7 discrete actions, automatic descent, 48x48 RGB observations.

    `is_test` picks the held-out test objects instead of the training objects. The class drives
    pybullet's global client, so keep one environment per process and close() it when done.
    """
    return _grasp_env_class()(
        renders=False, isDiscrete=True, removeHeightHack=False, maxSteps=max_steps, isTest=is_test
    )


# ---------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------


def preprocess_frame(obs: np.ndarray) -> torch.Tensor:
    """An RGB observation (H, W, 3) uint8 -> grayscale, bicubic 40x40, float in [0, 1], shape (1, 1, 40, 40).

    Same result as the lecture's torchvision pipeline (ToPILImage, Grayscale, Resize(40, bicubic),
    ToTensor), computed with Pillow alone on the observation the environment already returned.
    """
    if obs.ndim != 3 or obs.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {obs.shape}")
    gray = Image.fromarray(np.asarray(obs, dtype=np.uint8)).convert("L")
    gray = gray.resize((SCREEN_SIZE, SCREEN_SIZE), Image.Resampling.BICUBIC)
    frame = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)
    return frame.view(1, 1, SCREEN_SIZE, SCREEN_SIZE)


class FrameStack:
    """The last `size` preprocessed frames as one state of shape (1, size, 40, 40).

    An episode starts from `size` copies of its first frame, as in the lecture.
    """

    def __init__(self, size: int = STACK_SIZE) -> None:
        self.frames: deque[torch.Tensor] = deque(maxlen=size)

    def reset(self, frame: torch.Tensor) -> torch.Tensor:
        self.frames.extend([frame] * self.frames.maxlen)
        return self.state()

    def push(self, frame: torch.Tensor) -> torch.Tensor:
        self.frames.append(frame)
        return self.state()

    def state(self) -> torch.Tensor:
        return torch.cat(tuple(self.frames), dim=1)


# ---------------------------------------------------------------------------
# Replay memory
# ---------------------------------------------------------------------------

Transition = namedtuple("Transition", ("state", "action", "next_state", "reward"))
"""One step of experience; `next_state` is None when the step ended the episode."""


class ReplayMemory:
    """A cyclic buffer of the last `capacity` transitions, sampled uniformly."""

    def __init__(self, capacity: int, rng: Optional[random.Random] = None) -> None:
        self.capacity = capacity
        self.memory: list[Transition] = []
        self.position = 0
        self.rng = rng if rng is not None else random.Random()

    def push(self, *args: Any) -> None:
        """Save a transition (state, action, next_state, reward), overwriting the oldest when full."""
        if len(self.memory) < self.capacity:
            self.memory.append(Transition(*args))
        else:
            self.memory[self.position] = Transition(*args)
        self.position = (self.position + 1) % self.capacity

    def sample(self, batch_size: int) -> list[Transition]:
        return self.rng.sample(self.memory, batch_size)

    def __len__(self) -> int:
        return len(self.memory)


# ---------------------------------------------------------------------------
# Q-network
# ---------------------------------------------------------------------------


def conv2d_size_out(size: int, kernel_size: int, stride: int, padding: int = 0) -> int:
    """n_out = floor((n_in + 2p - k) / s) + 1, the lecture's convolution output size."""
    return (size + 2 * padding - kernel_size) // stride + 1


class DQN(nn.Module):
    """The lecture's Q-network: three convolutions (BatchNorm on the first two), one hidden layer.

    Layer names match the lecture, so its state dicts load here with strict=True and back.
    """

    def __init__(self, h: int, w: int, outputs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(STACK_SIZE, 32, kernel_size=8, stride=4)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=4, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=1)
        convw = conv2d_size_out(conv2d_size_out(conv2d_size_out(w, 8, 4), 4, 2), 3, 1)
        convh = conv2d_size_out(conv2d_size_out(conv2d_size_out(h, 8, 4), 4, 2), 3, 1)
        self.linear = nn.Linear(convw * convh * 64, 512)
        self.head = nn.Linear(512, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """States (B, STACK_SIZE, h, w) -> Q-values (B, outputs)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = F.relu(self.linear(x.flatten(start_dim=1)))
        return self.head(x)


# ---------------------------------------------------------------------------
# Acting and learning
# ---------------------------------------------------------------------------


def epsilon_by_episode(i_episode: int, eps_start: float, eps_end: float, decay_last_frame: int) -> float:
    """The lecture's schedule: linear from eps_start at episode 0, floored at eps_end."""
    return max(eps_end, eps_start - i_episode / decay_last_frame)


def greedy_action(policy_net: nn.Module, state: torch.Tensor) -> int:
    """argmax_a Q(state, a), with BatchNorm in eval mode (running statistics, not one sample's)."""
    was_training = policy_net.training
    policy_net.eval()
    with torch.no_grad():
        action = int(policy_net(state).argmax(dim=1).item())
    policy_net.train(was_training)
    return action


def select_action(
    policy_net: nn.Module, state: torch.Tensor, epsilon: float, n_actions: int, rng: random.Random
) -> int:
    """Epsilon-greedy: a uniform random action with probability epsilon, else the greedy one."""
    if rng.random() > epsilon:
        return greedy_action(policy_net, state)
    return rng.randrange(n_actions)


def optimize_model(
    policy_net: nn.Module,
    target_net: nn.Module,
    optimizer: torch.optim.Optimizer,
    memory: ReplayMemory,
    batch_size: int,
    gamma: float,
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """One gradient step on a sampled batch: Huber loss against r + gamma * max_a' Q_target(s', a').

    A terminal next state is worth 0. Returns (loss, mean Q(s, a)) as detached tensors, or None
    while the memory holds fewer than `batch_size` transitions.
    """
    if len(memory) < batch_size:
        return None
    batch = Transition(*zip(*memory.sample(batch_size)))
    state_batch = torch.cat(batch.state)
    action_batch = torch.cat(batch.action)
    reward_batch = torch.cat(batch.reward)
    non_final_mask = torch.tensor([s is not None for s in batch.next_state], device=state_batch.device)

    policy_net.train()
    state_action_values = policy_net(state_batch).gather(1, action_batch)

    next_state_values = torch.zeros(batch_size, device=state_batch.device)
    if non_final_mask.any():
        non_final_next_states = torch.cat([s for s in batch.next_state if s is not None])
        with torch.no_grad():
            next_state_values[non_final_mask] = target_net(non_final_next_states).max(dim=1).values
    expected_state_action_values = reward_batch + gamma * next_state_values

    loss = F.smooth_l1_loss(state_action_values, expected_state_action_values.unsqueeze(1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(policy_net.parameters(), 1.0)
    optimizer.step()
    return loss.detach(), state_action_values.detach().mean()


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate; sound for small samples and rates near 0 or 1."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def resume_path(checkpoint: Path) -> Path:
    """Where a run keeps its resumable state: `policy_dqn.pt` -> `policy_dqn.resume.pt`."""
    return checkpoint.with_name(checkpoint.stem + ".resume" + checkpoint.suffix)


def networks_state(policy_net: nn.Module, target_net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The lecture's checkpoint content, under its key names."""
    return dict(zip(CHECKPOINT_KEYS, (policy_net.state_dict(), target_net.state_dict(), optimizer.state_dict())))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then a rename over `path`.

    A crash or kill part-way leaves the previous file intact.
    """
    path = Path(path)
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp_name, "xb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def load_checkpoint(path: Path, device: torch.device, required_keys: tuple[str, ...]) -> dict[str, Any]:
    """Load a checkpoint of tensors and plain data only (weights_only=True): no pickled code runs.

    Every fault comes back as a CheckpointError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL (\S+)", str(error), flags=re.IGNORECASE)
        if blocked is None:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a truncated or corrupt one") from None
        raise CheckpointError(
            f"{path}: refused to load: it holds {blocked.group(1)}, not only tensors and plain data, "
            "and unpickling it could run code (torch.load weights_only=True)"
        ) from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a truncated or corrupt one") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dictionary of state dicts, found {type(checkpoint).__name__}")
    missing = [key for key in required_keys if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: missing key {', '.join(repr(k) for k in missing)}")
    return checkpoint


def load_state(module: Any, checkpoint: dict[str, Any], key: str, path: Path) -> None:
    """Load checkpoint[key] into a network or optimizer strictly, reporting a misfit as a CheckpointError."""
    try:
        module.load_state_dict(checkpoint[key])  # strict by default for networks
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
        detail = str(error).strip().splitlines()
        reason = " ".join(line.strip() for line in detail[:3]) if detail else type(error).__name__
        raise CheckpointError(f"{path}: {key!r} does not fit this network: {reason}") from None
