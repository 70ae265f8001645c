"""What the training and evaluation scripts share: the lecture's DQN for KUKA grasping.

Preprocessing, the frame stack, the replay memory, the convolutional Q-network, the
pybullet environment, the epsilon schedule, action selection, one optimisation step and
checkpoints. Scripts hold the loops; this module holds no script logic.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import math
import multiprocessing
import os
import pickle
import random
import re
import secrets
import signal
import sys
import tempfile
import warnings
import zipfile
from collections import deque, namedtuple
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from kinematics import POSE_FEATURES, START_POSE, Pose, move, pose_features, poses_after

STACK_SIZE = 5
"""Consecutive screens in one state, as in the lecture."""
SCREEN_SIZE = 40
"""Side of the square grayscale screen the network sees (the lecture's; --image-size changes it)."""
CAMERA_SIZE = 48
"""Side of the environment's camera image, its default and the lecture's."""
MIN_IMAGE_SIZE = 36
"""The smallest image side the lecture's three convolutions leave at least one pixel of."""
ACTION_NAMES = ("stay", "x-", "x+", "y-", "y+", "turn-", "turn+")
"""The 7 discrete actions of the environment with the height hack: the gripper descends with each."""
TIMESTEP_SCALE = 10.0
"""With --timestep-input the network gets t / TIMESTEP_SCALE: an episode lasts about 7 actions."""
CHECKPOINT_KEYS = ("policy_net_state_dict", "target_net_state_dict", "optimizer_policy_net_state_dict")
"""The lecture's checkpoint keys; DQN checkpoints written here always carry them, the pose agent's all but the
target network's (it has none)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C and a polite `kill` (or a batch scheduler's time limit): training saves its state on either."""


class UsageError(Exception):
    """Bad input the user can fix. Scripts print it as one line and exit non-zero."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the network."""


class WorkerError(RuntimeError):
    """An environment worker process failed or died; the message names it."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def report_errors(run: Callable[[], int]) -> int:
    """Run a script's body; bad input, a failed worker and Ctrl-C become one line on stderr and an exit code."""
    try:
        return run()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except WorkerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def image_side(text: str) -> int:
    """argparse type: an image side in pixels that the lecture's convolutions can take, >= MIN_IMAGE_SIZE."""
    value = int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_IMAGE_SIZE} pixels, got {text}")
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


def seed_int(text: str) -> int:
    """argparse type: a seed NumPy accepts, 0 <= seed < 2**32."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**32 - 1, got {text}")
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


def quiet_pybullet() -> Any:
    """The pybullet module, imported without its build-time line on the terminal."""
    with _silenced_output():
        import pybullet
    return pybullet


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


def display_problem() -> Optional[str]:
    """Why the PyBullet GUI cannot open here, or None when it can.

    On Linux the GUI needs an X display; without one, pybullet ends the whole process with
    "cannot connect to X server", so the display is opened once through Xlib beforehand.
    """
    if not sys.platform.startswith("linux"):
        return None
    name = os.environ.get("DISPLAY")
    if not name:
        return "no display to open the PyBullet GUI in (DISPLAY is not set)"
    library = ctypes.util.find_library("X11")
    if library is None:
        return "the PyBullet GUI needs libX11, which is not installed"
    xlib = ctypes.CDLL(library)
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    display = xlib.XOpenDisplay(None)
    if not display:
        return f"cannot open the display DISPLAY={name} for the PyBullet GUI"
    xlib.XCloseDisplay(display)
    return None


def make_env(is_test: bool, max_steps: int = 20, renders: bool = False, camera_size: int = CAMERA_SIZE) -> Any:
    """The lecture's environment: 7 discrete actions, automatic descent, 48x48 RGB observations.

    `is_test` picks the held-out test objects instead of the training objects; `renders` opens
    the PyBullet GUI (check `display_problem` first); `camera_size` renders the observations at
    another size, from the same camera. The class drives pybullet's global client, so keep one
    environment per process and close() it when done.
    """
    return _grasp_env_class()(
        renders=renders, isDiscrete=True, removeHeightHack=False, maxSteps=max_steps, isTest=is_test,
        width=camera_size, height=camera_size,
    )


def render_scene(env: Any, size: int = 256) -> np.ndarray:
    """The environment's own camera at `size` x `size` pixels, RGB uint8: what the agent sees, in detail.

    Rendering steps no physics, so recording leaves the episode unchanged.
    """
    import pybullet

    image = pybullet.getCameraImage(size, size, viewMatrix=env._view_matrix, projectionMatrix=env._proj_matrix)[2]
    return np.reshape(np.asarray(image, dtype=np.uint8), (size, size, 4))[:, :, :3].copy()


def gripper_and_objects(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """The gripper's (x, y) and each object's, in metres in the tray's plane: the simulator's truth.

    For analysis only (benchmarks/approach_probe.py); the agent sees nothing but the camera.
    """
    import pybullet

    gripper = pybullet.getLinkState(env._kuka.kukaUid, env._kuka.kukaEndEffectorIndex)[0][:2]
    objects = [pybullet.getBasePositionAndOrientation(uid)[0][:2] for uid in env._objectUids]
    return np.array(gripper), np.array(objects)


def worker_seed(seed: int, index: int) -> int:
    """The seed of environment worker `index` in a run seeded with `seed`: distinct per worker, fixed per pair."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _env_worker(connection: Connection, seed: int, is_test: bool, max_steps: int, observation: Observation) -> None:
    """One worker process: its own environment, answering ("reset",) and ("step", action) over a pipe.

    Replies ("frame", frame, reward, done) with the frame preprocessed for `observation`, so that
    the pipe carries 1,600 bytes a step with the lecture's; ("scene", size) is answered with
    `render_scene` of the moment, and ("positions",) with `gripper_and_objects`.
    """
    env = None
    try:
        seed_everything(seed)
        env = make_env(is_test, max_steps, camera_size=observation.camera_size)
        connection.send(("ready", env.action_space.n))
        while True:
            command = connection.recv()
            if command[0] == "reset":
                connection.send(("frame", observation.preprocess(env.reset()), 0, False))
            elif command[0] == "step":
                obs, reward, done, _ = env.step(command[1])
                connection.send(("frame", observation.preprocess(obs), reward, bool(done)))
            elif command[0] == "scene":
                connection.send(("scene", render_scene(env, command[1])))
            elif command[0] == "positions":
                connection.send(("positions", *gripper_and_objects(env)))
            else:
                break
    except (EOFError, BrokenPipeError):
        pass  # the main process has gone; nothing is left to answer
    except Exception as error:
        with contextlib.suppress(OSError):
            first_line = next(iter(str(error).splitlines()), "")
            connection.send(("error", f"{type(error).__name__}: {first_line}"))
    finally:
        if env is not None:
            env.close()


class EnvPool:
    """`num_envs` environments, one per process, each stepping as soon as it is given its action.

    Unlike gym's lockstep AsyncVectorEnv, a worker that is resetting (about 0.8 s of physics)
    holds up no other. Send requests with `reset` and `step`, collect replies with `results`.
    """

    def __init__(self, num_envs: int, seed: int, is_test: bool, max_steps: int = 20,
                 observation: Optional[Observation] = None) -> None:
        """`observation` is what the workers' frames are preprocessed for; None: the lecture's."""
        observation = observation or Observation()
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads or CUDA
        self.connections: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        try:
            for index in range(num_envs):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_env_worker, args=(child_end, worker_seed(seed, index), is_test, max_steps, observation),
                    name=f"env-worker-{index}", daemon=True)
                # Ctrl-C reaches every process of the terminal, and a batch scheduler's SIGTERM every
                # process of the job; a worker born with both ignored leaves them to the main process,
                # which stops the workers itself.
                previous_handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
                try:
                    process.start()
                finally:
                    for signum, handler in previous_handlers.items():
                        signal.signal(signum, handler)
                child_end.close()
                self.connections.append(parent_end)
                self.processes.append(process)
            ready = [self._receive(index) for index in range(num_envs)]  # each has built its environment
            self.n_actions: int = ready[0][1]
        except BaseException:
            self.close()
            raise

    @property
    def num_envs(self) -> int:
        return len(self.processes)

    def reset(self, index: int) -> None:
        """Ask worker `index` to start a new episode; its reply carries the first frame."""
        self._send(index, ("reset",))

    def step(self, index: int, action: int) -> None:
        """Ask worker `index` to take `action`; its reply carries the frame, reward and done."""
        self._send(index, ("step", int(action)))

    def scene(self, index: int, size: int = 256) -> np.ndarray:
        """Worker `index`'s scene as `render_scene` draws it; call only while no other reply is due from it."""
        self._send(index, ("scene", size))
        return self._receive(index)[1]

    def positions(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Worker `index`'s gripper and objects as `gripper_and_objects` gives them; call only while no other
        reply is due from it."""
        self._send(index, ("positions",))
        return self._receive(index)[1:]

    def poll(self) -> bool:
        """Whether some worker has a reply waiting (or has died), without blocking."""
        return bool(wait(self.connections, timeout=0))

    def results(self) -> list[tuple[int, np.ndarray, float, bool]]:
        """Block until a worker replies; return every waiting reply as (index, frame, reward, done)."""
        ready = wait(self.connections + [p.sentinel for p in self.processes])
        replies = []
        for index, connection in enumerate(self.connections):
            if connection in ready or self.processes[index].sentinel in ready:
                _, frame, reward, done = self._receive(index)
                replies.append((index, frame, reward, done))
        return replies

    def close(self) -> None:
        """Stop every worker: ask politely, then kill any that does not exit within 5 s (they ignore SIGTERM)."""
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.send(("close",))
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()
        self.connections, self.processes = [], []

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _send(self, index: int, command: tuple) -> None:
        try:
            self.connections[index].send(command)
        except OSError:
            raise WorkerError(self._death(index)) from None

    def _receive(self, index: int) -> tuple:
        try:
            message = self.connections[index].recv()
        except (EOFError, OSError):
            raise WorkerError(self._death(index)) from None
        if message[0] == "error":
            raise WorkerError(f"environment worker {index} failed: {message[1]}")
        return message

    def _death(self, index: int) -> str:
        process = self.processes[index]
        process.join(timeout=5)
        code = process.exitcode
        if code is not None and code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}" if code is not None else "stopped answering"
        return f"environment worker {index} (pid {process.pid}) died: {how}"


# ---------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------


def preprocess_frame(obs: np.ndarray, size: int = SCREEN_SIZE, rgb: bool = False) -> np.ndarray:
    """An RGB observation (H, W, 3) uint8 -> grayscale, bicubic 40x40, uint8 of shape (40, 40).

    Divided by 255 (see `to_float`) it is exactly the lecture's torchvision pipeline (ToPILImage,
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


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> the network's input, float32 in [0, 1]; stacked colour frames (B, STACK_SIZE, 3, H, W)
    become (B, 3 * STACK_SIZE, H, W), a frame's channels side by side."""
    if frames.dim() == 5:
        frames = frames.flatten(1, 2)
    return frames.float().div_(255.0)


@dataclass(frozen=True)
class Observation:
    """What the network sees of each camera image: a `size` x `size` frame, grayscale (the lecture's) or RGB.

    The camera renders at the environment's 48x48, or at `size` when that is larger, so that a
    larger input holds more detail rather than an enlarged image. Checkpoints record both fields.
    """

    size: int = SCREEN_SIZE
    rgb: bool = False

    @property
    def camera_size(self) -> int:
        return max(CAMERA_SIZE, self.size)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size) if self.rgb else (self.size, self.size)

    def preprocess(self, obs: np.ndarray) -> np.ndarray:
        """A camera image as this observation's uint8 frame."""
        return preprocess_frame(obs, self.size, self.rgb)


class FrameStack:
    """The last `size` preprocessed frames as one state, uint8 of shape (size, 40, 40) with the lecture's frames.

    An episode starts from `size` copies of its first frame, as in the lecture.
    """

    def __init__(self, size: int = STACK_SIZE) -> None:
        self.frames: deque[np.ndarray] = deque(maxlen=size)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        self.frames.extend([frame] * self.frames.maxlen)
        return self.state()

    def push(self, frame: np.ndarray) -> np.ndarray:
        self.frames.append(frame)
        return self.state()

    def state(self) -> np.ndarray:
        return np.stack(self.frames)


class EpisodeRecorder:
    """Frames of played episodes for a GIF or an image strip: the scene beside the network's view, captioned.

    Each frame puts a `size` x `size` render of the scene next to the frame the network sees
    (enlarged, nearest neighbour), with the episode, the step, the action just taken
    and, at the end, the outcome written under it. An episode gives one frame per step plus the first.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.line_height = max(12, size // 16)
        self.font = ImageFont.load_default(size=self.line_height - 2)
        self.frames: list[Image.Image] = []
        self.episode_ends: list[int] = []  # index of each episode's last frame
        self.episode = 0

    def start(self, scene: np.ndarray, screen: np.ndarray) -> None:
        """The first frame of a new episode, as the environment was reset."""
        self.episode += 1
        self._add(scene, screen, [f"episode {self.episode}, step 0", "start"])

    def step(self, scene: np.ndarray, screen: np.ndarray, step: int, action: int, reward: float, done: bool) -> None:
        """The frame after action `action` of step `step`; the last one of an episode says how it ended."""
        lines = [f"episode {self.episode}, step {step}", f"action {action}: {ACTION_NAMES[action]}"]
        if done:
            lines.append("success: object lifted" if reward > 0 else "failure: nothing lifted")
            self.episode_ends.append(len(self.frames))
        self._add(scene, screen, lines)

    def _add(self, scene: np.ndarray, screen: np.ndarray, lines: list[str]) -> None:
        size, line_height = self.size, self.line_height
        frame = Image.new("RGB", (2 * size, size), "black")
        frame.paste(Image.fromarray(scene).resize((size, size), Image.Resampling.BILINEAR), (0, 0))
        side = screen.shape[-1]
        scale = max(1, (size - 3 * line_height - 8) // side)
        view = Image.fromarray(screen if screen.ndim == 2 else screen.transpose(1, 2, 0))
        view = view.resize((side * scale, side * scale), Image.Resampling.NEAREST)
        left = size + (size - view.width) // 2
        frame.paste(view.convert("RGB"), (left, 4))
        draw = ImageDraw.Draw(frame)
        for row, line in enumerate(lines):
            draw.text((left, view.height + 6 + row * line_height), line, fill="white", font=self.font)
        self.frames.append(frame)

    def save_gif(self, path: Path, frame_ms: int = 400, end_ms: int = 1500) -> None:
        """Write the frames as a looping GIF, holding each episode's last frame longer; atomically."""
        if not self.frames:
            raise ValueError("no frames recorded")
        ends = set(self.episode_ends)
        durations = [end_ms if index in ends else frame_ms for index in range(len(self.frames))]
        with atomic_write(Path(path)) as handle:
            self.frames[0].save(handle, format="GIF", save_all=True, append_images=self.frames[1:],
                                duration=durations, loop=0)

    def strip(self) -> np.ndarray:
        """All frames side by side as one RGB image (H, W, 3), for TensorBoard."""
        return np.concatenate([np.asarray(frame) for frame in self.frames], axis=1)


# ---------------------------------------------------------------------------
# Replay memory
# ---------------------------------------------------------------------------

Batch = namedtuple("Batch", ("state", "action", "next_state", "reward", "done", "timestep", "next_timestep",
                             "pose", "next_pose"), defaults=(None, None))
"""Sampled transitions as tensors on the memory's device: uint8 states (B, STACK_SIZE, *frame shape),
int64 actions, float32 rewards, bool `done`, and int64 timesteps (actions taken in the episode
before `state` and before `next_state`); a terminal transition's `next_state` is meaningless.
A memory with `first_frame` puts the episode's first frame ahead of each stack (B, 1 + STACK_SIZE, ...);
one with `poses` gives the commanded poses (B, 3) at `state` and `next_state` (kinematics.Pose units)."""


class ReplayMemory:
    """The last `capacity` transitions, sampled uniformly, each frame stored once as uint8 on `device`.

    A transition costs one frame (1,600 bytes with the lecture's 40x40) and a few bytes of action,
    reward and bookkeeping, against 64 KB for the lecture's two float stacks. States are rebuilt from the
    frames their stream stored before them, so transitions arrive in `streams` (one per
    environment), each pushed in the order it happened, and each stream keeps its share of
    the capacity, as Stable-Baselines3 does with several environments.

    The DQN's opt-in inputs come from the episode so far: with `first_frame` each state carries its
    episode's first frame, and with `poses` the batch carries the commanded pose, which follows from the
    actions since the episode's start. Either keeps `max_episode_steps` spare slots, so that the oldest
    transition's episode is still held from its start.
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu", num_streams: int = 1,
                 seed: Optional[int] = None, frame_shape: tuple[int, ...] = (SCREEN_SIZE, SCREEN_SIZE),
                 first_frame: bool = False, poses: bool = False, max_episode_steps: int = 20) -> None:
        """`frame_shape` is one preprocessed frame's (`Observation.frame_shape`), the lecture's by default."""
        if capacity < num_streams:
            raise ValueError(f"capacity {capacity} is smaller than the number of streams {num_streams}")
        self.capacity = capacity
        self.device = torch.device(device)
        self.first_frame, self.poses = first_frame, poses
        self.shares = np.array([capacity // num_streams + (s < capacity % num_streams) for s in range(num_streams)])
        # Spare slots keep the frames of the oldest transition's state (or episode) alive while the
        # newest next frame is written.
        self.history = max(STACK_SIZE, max_episode_steps) if first_frame or poses else STACK_SIZE
        self.slots = int(self.shares.max()) + self.history
        self.frames = torch.zeros((num_streams, self.slots, *frame_shape), dtype=torch.uint8,
                                  device=self.device)
        self.actions = np.zeros((num_streams, self.slots), dtype=np.int64)
        self.rewards = np.zeros((num_streams, self.slots), dtype=np.float32)
        self.dones = np.zeros((num_streams, self.slots), dtype=bool)
        self.episode_starts = np.zeros((num_streams, self.slots), dtype=np.int64)
        """Step number, within its stream, of the first transition of each transition's episode."""
        self.pushed = np.zeros(num_streams, dtype=np.int64)
        self.oldest = np.zeros(num_streams, dtype=np.int64)
        """Step number of each stream's oldest transition still held."""
        self._last_next_state: list[Optional[np.ndarray]] = [None] * num_streams
        self._episode_start = np.zeros(num_streams, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def push(self, state: np.ndarray, action: int, next_state: Optional[np.ndarray], reward: float,
             stream: int = 0) -> None:
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

    def sampleable(self, n_step: int = 1) -> int:
        """Transitions `sample` can draw from: a stream's newest n_step - 1 wait for the steps after them."""
        return int(np.maximum(self.pushed - self.oldest - (n_step - 1), 0).sum())

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 1.0) -> Batch:
        """`batch_size` distinct transitions drawn uniformly, gathered by index on the device.

        With n_step > 1 each becomes an n-step transition: `reward` is the return
        r_t + gamma r_t+1 + ... over n steps or up to the episode's end, `next_state` the state n
        steps on, and `done` whether the episode ended within them. n_step = 1 is the lecture's.
        """
        ready = np.maximum(self.pushed - self.oldest - (n_step - 1), 0)
        if batch_size > ready.sum():
            raise ValueError(f"cannot sample {batch_size} transitions from a memory with {ready.sum()} ready")
        ends = np.cumsum(ready)
        flat = self.rng.choice(ends[-1], size=batch_size, replace=False)
        stream = np.searchsorted(ends, flat, side="right")
        return self._gather(stream, self.oldest[stream] + flat - (ends - ready)[stream], n_step, gamma)

    def transitions(self, stream: int, n_step: int = 1, gamma: float = 1.0) -> Batch:
        """Every transition `sample` could draw from `stream`, oldest first, as one batch (for analysis)."""
        step = np.arange(self.oldest[stream], max(self.oldest[stream], self.pushed[stream] - (n_step - 1)))
        return self._gather(np.full(len(step), stream), step, n_step, gamma)

    def _gather(self, stream: np.ndarray, step: np.ndarray, n_step: int, gamma: float) -> Batch:
        """The transitions at these (stream, step) pairs, as n-step transitions on the device."""
        batch_size = len(step)
        slot = step % self.slots

        ahead = (step[:, None] + np.arange(n_step)) % self.slots
        dones = self.dones[stream[:, None], ahead]
        before_end = np.cumprod(np.hstack((np.ones((batch_size, 1), bool), ~dones[:, :-1])), axis=1).astype(bool)
        discounts = gamma ** np.arange(n_step)
        rewards = (self.rewards[stream[:, None], ahead] * before_end * discounts).sum(axis=1).astype(np.float32)

        # Frames from before the episode's first step are replaced by its first frame, as in FrameStack.
        back = np.arange(STACK_SIZE - 1, -1, -1)
        first = self.episode_starts[stream, slot][:, None]
        state_steps = np.maximum(step[:, None] - back, first)
        next_steps = np.maximum(step[:, None] + n_step - back, first)
        if self.first_frame:
            state_steps, next_steps = np.hstack((first, state_steps)), np.hstack((first, next_steps))
        index = torch.from_numpy(np.stack((state_steps, next_steps)) % self.slots).to(self.device)
        frames = self.frames[torch.from_numpy(stream).to(self.device)[:, None], index]
        timestep, next_timestep = step - first[:, 0], step + n_step - first[:, 0]
        pose = next_pose = None
        if self.poses:  # the actions since the episode's start, n_step more for the next state
            taken = self.actions[stream[:, None], (first + np.arange(self.history + n_step)) % self.slots]
            pose = torch.from_numpy(poses_after(taken, timestep)).to(self.device)
            next_pose = torch.from_numpy(poses_after(taken, next_timestep)).to(self.device)
        return Batch(
            state=frames[0],
            action=torch.from_numpy(self.actions[stream, slot]).to(self.device),
            next_state=frames[1],
            reward=torch.from_numpy(rewards).to(self.device),
            done=torch.from_numpy((dones & before_end).any(axis=1)).to(self.device),
            timestep=torch.from_numpy(timestep).to(self.device),
            next_timestep=torch.from_numpy(next_timestep).to(self.device),
            pose=pose,
            next_pose=next_pose,
        )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on sampling the same transitions: tensors and plain data only.

        A stream's unfinished episode is left out (its environment starts a new one on resume),
        so that no transition bootstraps into the next episode.
        """
        unfinished = np.array([state is not None for state in self._last_next_state])
        pushed = np.where(unfinished, self._episode_start, self.pushed)
        arrays = dict(actions=self.actions, rewards=self.rewards, dones=self.dones,
                      episode_starts=self.episode_starts, pushed=pushed, oldest=np.minimum(self.oldest, pushed))
        return {"frames": self.frames.cpu(), **{key: torch.from_numpy(value.copy()) for key, value in arrays.items()},
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take over a `state_dict` saved by a memory of the same capacity and number of streams."""
        if tuple(state["frames"].shape) != tuple(self.frames.shape):
            raise ValueError(f"saved for {state['frames'].shape[0]} stream(s) of {state['frames'].shape[1]} slots, "
                             f"not {self.frames.shape[0]} of {self.frames.shape[1]}")
        self.frames.copy_(state["frames"])
        for key in ("actions", "rewards", "dones", "episode_starts", "pushed", "oldest"):
            getattr(self, key)[...] = state[key].numpy()
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
    """The lecture's Q-network: three convolutions (BatchNorm on the first two), one hidden layer.

    Layer names match the lecture, so its state dicts load here with strict=True and back.
    `timestep_input` (opt-in; the slides' state includes t, the lecture's code does not) feeds the
    episode's timestep to the hidden layer beside the image features: one more input column there.
    `rgb` (opt-in) takes stacks of colour frames, three input channels per frame. Two opt-ins give it
    what the pose agent knows: `first_frame_input`, the episode's first frame ahead of the stack (the
    scene before the arm covers it), and `pose_input`, the commanded pose beside the image features
    (kinematics.pose_features). `in_channels` other than the states' is for analysis
    (benchmarks/input_probe.py) only.
    """

    network = "lecture"
    """How `--network` and a checkpoint's `config` name this class's convolutions."""

    def __init__(self, h: int, w: int, outputs: int, timestep_input: bool = False, rgb: bool = False,
                 in_channels: Optional[int] = None, first_frame_input: bool = False, pose_input: bool = False) -> None:
        super().__init__()
        self.timestep_input = timestep_input
        self.first_frame_input = first_frame_input
        self.pose_input = pose_input
        self.rgb = rgb
        self.image_size = h
        frames = STACK_SIZE + int(first_frame_input)
        features = self.build_convolutions(in_channels or frames * (3 if rgb else 1), h, w)
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

    def forward(self, x: torch.Tensor, timestep: Optional[torch.Tensor] = None,
                pose: Optional[torch.Tensor] = None) -> torch.Tensor:
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
        return {"timestep_input": self.timestep_input, "image_size": self.image_size, "rgb": self.rgb,
                "network": self.network, "first_frame_input": self.first_frame_input, "pose_input": self.pose_input}

    @classmethod
    def for_observation(cls, observation: Observation, outputs: int, timestep_input: bool = False,
                        first_frame_input: bool = False, pose_input: bool = False) -> "DQN":
        """This class's network for stacks of `observation`'s frames."""
        return cls(observation.size, observation.size, outputs, timestep_input, observation.rgb,
                   first_frame_input=first_frame_input, pose_input=pose_input)

    @staticmethod
    def from_config(config: dict[str, Any], outputs: int) -> "DQN":
        """The network a checkpoint's `config` (as `checkpoint_config` reads it) describes."""
        return NETWORKS[config["network"]].for_observation(observation_of(config), outputs, config["timestep_input"],
                                                           config["first_frame_input"], config["pose_input"])


class FineDQN(DQN):
    """The lecture's network with finer convolutions (opt-in, `--network fine`): 3x3 and 4x4 kernels, strides
    2, 1, 2, 2, BatchNorm on the first three, so the hidden layer sees a 6x6 grid at 48x48 where the lecture's
    sees 2x2 (1x1 at its 40x40).

    Grasping hinges on where the gripper is against the objects, a few pixels apart; on the approach probe's
    saved episodes this network reads the approach of a move far better than the lecture's, at about six
    times its training time there (benchmarks/approach_probe.py).
    """

    network = "fine"

    def build_convolutions(self, in_channels: int, h: int, w: int) -> int:
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=4, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1)
        sizes = [conv2d_size_out(conv2d_size_out(conv2d_size_out(conv2d_size_out(side, 4, 2, 1), 3, 1, 1), 3, 2, 1),
                                 3, 2, 1) for side in (h, w)]
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
    """Eval mode and no gradients for the block: BatchNorm uses its running statistics, as when acting.

    The network's mode is restored afterwards.
    """
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was_training)


def greedy_actions(policy_net: nn.Module, states: np.ndarray, timesteps: Optional[list[int]] = None,
                   poses: Optional[np.ndarray] = None) -> list[int]:
    """argmax_a Q(state, a) for a batch of uint8 states (and their timesteps and commanded poses), in one forward
    pass, in eval mode."""
    device = next(policy_net.parameters()).device
    timestep = None if timesteps is None else torch.tensor(timesteps, device=device)
    pose = None if poses is None else pose_features(torch.from_numpy(poses).to(device))
    with evaluating(policy_net):
        return policy_net(to_float(torch.from_numpy(states).to(device)), timestep, pose).argmax(dim=1).tolist()


def random_shift(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random-shift augmentation (DrQ): pad by repeating the border, crop back at a random offset per image.

    Float images (B, C, H, W) in, the same shape out; draws from torch's global generator.
    """
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
    policy_net: nn.Module, states: np.ndarray, epsilon: float, n_actions: int, rng: random.Random,
    timesteps: Optional[list[int]] = None, poses: Optional[np.ndarray] = None,
) -> list[int]:
    """Epsilon-greedy for each state: uniform with probability epsilon, else greedy (one batched pass)."""
    explore = [rng.random() <= epsilon for _ in range(len(states))]
    greedy = greedy_actions(policy_net, states, timesteps, poses) if not all(explore) else []
    return [rng.randrange(n_actions) if explore[i] else greedy[i] for i in range(len(states))]


class DQNPolicy:
    """Acting with a DQN in a set of environments, as the scripts call a policy: a batch of states, the
    environments they come from and their timesteps (actions taken in the episode so far).

    The lecture's network needs the states only. A network with `first_frame_input` or `pose_input` needs the
    episode so far: the policy keeps each environment's first frame (at timestep 0) and follows its commanded
    pose, each action returned being assumed taken.
    """

    def __init__(self, policy_net: DQN, n_actions: int, rng: Optional[random.Random] = None) -> None:
        self.policy_net, self.n_actions, self.rng = policy_net, n_actions, rng or random.Random(0)
        self.first_frames: dict[int, np.ndarray] = {}
        self.poses: dict[int, Pose] = {}

    def __call__(self, states: np.ndarray, indices: list[int], timesteps: list[int], epsilon: float = 0.0) -> list[int]:
        for position, (index, t) in enumerate(zip(indices, timesteps)):
            if t == 0:
                self.first_frames[index], self.poses[index] = states[position, -1], START_POSE
        if self.policy_net.first_frame_input:
            states = np.concatenate((np.stack([self.first_frames[i] for i in indices])[:, None], states), axis=1)
        poses = np.array([self.poses[i] for i in indices]) if self.policy_net.pose_input else None
        if epsilon > 0:
            actions = select_actions(self.policy_net, states, epsilon, self.n_actions, self.rng, timesteps, poses)
        else:
            actions = greedy_actions(self.policy_net, states, timesteps, poses)
        for index, action in zip(indices, actions):
            self.poses[index] = move(self.poses[index], action)
        return actions


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
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """One gradient step on a sampled batch: Huber loss against r + gamma * max_a' Q_target(s', a').

    A terminal next state is worth 0. The lecture's step is the default; the options are opt-in:
    `n_step` bootstraps n steps on from the discounted return in between (gamma**n on the
    next value); `double_dqn` lets the policy network pick a' and the target network value it;
    `augment` shifts states and next states at random. Returns (loss, mean Q(s, a)) as detached
    tensors, or None while the memory cannot yet give a batch.
    """
    if memory.sampleable(n_step) < batch_size:
        return None
    batch = memory.sample(batch_size, n_step, gamma)
    state, next_state = to_float(batch.state), to_float(batch.next_state)
    if augment:
        state, next_state = random_shift(state), random_shift(next_state)

    pose = next_pose = None
    if batch.pose is not None:
        pose, next_pose = pose_features(batch.pose), pose_features(batch.next_pose)

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


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate; sound for small samples and rates near 0 or 1."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


def success_rate(successes: int, trials: int) -> str:
    """`successes/trials = rate% (95% CI low-high%)`, the way the scripts print a success rate."""
    low, high = wilson_interval(successes, trials)
    return f"{successes}/{trials} = {100 * successes / trials:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%)"


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def resume_path(checkpoint: Path) -> Path:
    """Where a run keeps its resumable state: `policy_dqn.pt` -> `policy_dqn.resume.pt`."""
    return checkpoint.with_name(checkpoint.stem + ".resume" + checkpoint.suffix)


def networks_state(policy_net: DQN, target_net: DQN, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The lecture's checkpoint content, under its key names, and the network's `config`."""
    state = dict(zip(CHECKPOINT_KEYS, (policy_net.state_dict(), target_net.state_dict(), optimizer.state_dict())))
    return {**state, "config": policy_net.config}


LECTURE_CONFIG = {"timestep_input": False, "image_size": SCREEN_SIZE, "rgb": False, "network": DQN.network,
                  "first_frame_input": False, "pose_input": False}
"""The lecture's network as a checkpoint's `config` records it; a key a checkpoint lacks takes its value here."""


def checkpoint_agent(checkpoint: dict[str, Any]) -> str:
    """Which agent wrote a checkpoint: its config's 'agent' ('pose'), or 'dqn' for the lecture's, which records none."""
    config = checkpoint.get("config", {})
    return str(config.get("agent", "dqn")) if isinstance(config, dict) else "dqn"


def checkpoint_config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The network configuration a checkpoint records, completed from the lecture's (older files record less).

    A checkpoint of another agent (pose_agent.py) is refused, naming it.
    """
    if (agent := checkpoint_agent(checkpoint)) != "dqn":
        raise CheckpointError(f"{path}: a checkpoint of --agent {agent}, not of the lecture's DQN")
    saved = checkpoint.get("config", {})
    config = {**LECTURE_CONFIG, **saved} if isinstance(saved, dict) else None
    flags = ("timestep_input", "rgb", "first_frame_input", "pose_input")
    if (config is None or config.keys() != LECTURE_CONFIG.keys()
            or not all(isinstance(config[flag], bool) for flag in flags) or type(config["image_size"]) is not int
            or config["image_size"] < MIN_IMAGE_SIZE
            or not isinstance(config["network"], str) or config["network"] not in NETWORKS):
        raise CheckpointError(f"{path}: its 'config' is not a network configuration: {saved!r}")
    return config


def observation_of(config: dict[str, Any]) -> Observation:
    """The frames a network of this checkpoint `config` takes."""
    return Observation(config["image_size"], config["rgb"])


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Any]:
    """A binary file handle whose content replaces `path` only once the block has ended without error.

    It is a temporary file in the same folder, renamed over `path`: a crash or kill part-way
    leaves the previous file intact.
    """
    path = Path(path)
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp_name, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def check_writable_folder(folder: Path, flag: str) -> None:
    """Create `folder` if needed and prove a file can be written there, before minutes or hours of work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {folder}: cannot write there ({error.strerror or error})") from None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` with torch.save, atomically (see `atomic_write`)."""
    with atomic_write(path) as handle:
        torch.save(payload, handle)


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
