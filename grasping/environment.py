"""The lecture's pybullet environment, and how a camera image becomes the frame a network sees. Imports no torch,
so that the environment workers stay small."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import random
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image

from grasping.cli import UsageError

SCREEN_SIZE = 40
"""Side of the square grayscale screen the network sees (the lecture's; --image-size changes it)."""
CAMERA_SIZE = 48
"""Side of the environment's camera image, its default and the lecture's."""


def seed_environment(seed: int) -> None:
    """Seed the generators the environment draws from: it places objects with `random` and NumPy's global RNG."""
    random.seed(seed)
    np.random.seed(seed)


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
def grasp_env_class() -> type:
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
    return grasp_env_class()(
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


def preprocess_frame(obs: np.ndarray, size: int = SCREEN_SIZE, rgb: bool = False) -> np.ndarray:
    """An RGB observation (H, W, 3) uint8 -> grayscale, bicubic 40x40, uint8 of shape (40, 40).

    Divided by 255 (common.to_float) it is exactly the lecture's torchvision pipeline (ToPILImage,
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
