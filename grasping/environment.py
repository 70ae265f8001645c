"""The lecture's pybullet environment, made quietly, and the seeds of its workers. Imports no torch (nor common,
which does), so that the environment workers stay small."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import random
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from grasping.camera import camera_matrix, heights, unproject, view_and_projection
from grasping.cli import UsageError

CAMERA_SIZE = 48
"""Side of KukaDiverseObjectEnv's camera image by default (common.CAMERA_SIZE, which this module may not import)."""


def seed_environment(seed: int) -> None:
    """Seed the generators the environment draws from: it places objects with `random` and NumPy's global RNG."""
    random.seed(seed)
    np.random.seed(seed)


def scene_generators(env: Any) -> tuple[Any, Any]:
    """The state of the generators `env`'s next reset will draw its scene from (`seed_environment`'s two)."""
    return random.getstate(), np.random.get_state()


def restore_scene_generators(env: Any, state: tuple[Any, Any]) -> None:
    """Put the generators back to a `scene_generators` state: `env`'s next reset draws that scene again (the
    physics is deterministic, so the same moves then give the same outcome)."""
    random.setstate(state[0])
    np.random.set_state(state[1])


def worker_seed(seed: int, index: int) -> int:
    """The seed of environment worker `index` in a run seeded with `seed`: distinct per worker, fixed per pair."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@contextlib.contextmanager
def silenced_output() -> Iterator[None]:
    """Send stdout and stderr, C-level prints included, to /dev/null for the block (pybullet's and Ray's C++
    code print there; in a Jupyter kernel, Python's prints go to sys.stdout rather than to the descriptors)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
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
    with silenced_output():
        import pybullet
    return pybullet


@functools.cache
def grasp_env_class() -> Any:
    """Import pybullet's KukaDiverseObjectEnv once, quietly, and return our thin subclass of it.

    The import prints pybullet's build time, a `current_dir=` line, gym's NumPy 2 notice and a
    pkg_resources deprecation warning; none of them is an error, so they are kept off the
    user's terminal. A missing pkg_resources (setuptools 82 and later) is reported plainly.
    """
    try:
        with warnings.catch_warnings(), silenced_output():
            warnings.simplefilter("ignore")
            import gym
            from pybullet_envs.bullet.kuka_diverse_object_gym_env import KukaDiverseObjectEnv
    except ModuleNotFoundError as error:
        if error.name == "pkg_resources":
            raise UsageError(
                "pybullet_envs needs pkg_resources, which setuptools 82 and later no longer ship: "
                "pip install 'setuptools<82'"
            ) from None
        raise
    import pybullet

    class KukaGraspEnv(KukaDiverseObjectEnv):
        """pybullet's class, but for a physics server that keeps no file cache and a close() that disconnects it
        once.

        The server caches every file it loads, and each reset loads five of the 900 training objects:
        with the cache a worker grows with every object it has not seen yet (bullet3 issue 2277; pfrl
        turns it off too), without it the worker stays flat (docs/parallel.md has the figures).

        With `height_channel`, each observation carries a fourth channel: the height of what each pixel shows. With
        `overhead`, the observations come from a second camera straight above the tray instead of the environment's
        oblique one (`camera_with_depth`).

        The parent's __del__ disconnects the global client unconditionally: after an explicit disconnect
        it prints "Not connected to physics server", and since pybullet reuses client ids it could even
        disconnect a newer environment in the same process.
        """

        def __init__(self, height_channel: bool = False, overhead: bool = False, **options: Any) -> None:
            self.height_channel, self.overhead = height_channel, overhead
            self.camera_matrix = camera_matrix(overhead)
            """The rendering camera's projection times view, fixed: a pixel's depth to its world point."""
            super().__init__(**options)
            pybullet.setPhysicsEngineParameter(enableFileCaching=0, physicsClientId=self.cid)
            if height_channel:
                self.observation_space = gym.spaces.Box(0, 255, (self._height, self._width, 4), dtype=np.uint8)

        def _get_observation(self) -> np.ndarray:
            """The camera's colour (H, W, 3), or with `height_channel` (H, W, 4): the colour and the height of what
            each pixel shows (`camera.heights` of the depth buffer unprojected), from the same render."""
            if not (self.height_channel or self.overhead):
                return super()._get_observation()
            rgb, depth = camera_with_depth(self, self._width, pybullet, self.overhead)
            if not self.height_channel:
                return rgb
            return np.dstack((rgb, heights(unproject(depth, self.camera_matrix)[..., 2])))

        def close(self) -> None:
            if not getattr(self, "_disconnected", False) and hasattr(self, "cid"):
                self._disconnected = True
                if pybullet.isConnected(self.cid):
                    pybullet.disconnect(self.cid)

        def __del__(self) -> None:
            self.close()

    return KukaGraspEnv


def display_problem() -> str | None:
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


def make_env(
    is_test: bool,
    max_steps: int = 20,
    renders: bool = False,
    camera_size: int = CAMERA_SIZE,
    height: bool = False,
    overhead: bool = False,
) -> Any:
    """The lecture's environment: 7 discrete actions, automatic descent, 48x48 RGB observations.

    `is_test` picks the held-out test objects instead of the training objects; `renders` opens
    the PyBullet GUI (check `display_problem` first); `camera_size` renders the observations at
    another size, from the same camera; `height` adds the height channel (H, W, 4); `overhead` renders them from a
    second camera straight above the tray (`camera_with_depth`). The class drives
    pybullet's global client, so keep one environment per process and close() it when done.
    """
    return grasp_env_class()(
        height_channel=height,
        overhead=overhead,
        renders=renders,
        isDiscrete=True,
        removeHeightHack=False,
        maxSteps=max_steps,
        isTest=is_test,
        width=camera_size,
        height=camera_size,
    )


def render_scene(env: Any, size: int = 256, pybullet: Any = None) -> np.ndarray:
    """The environment's own camera at `size` x `size` pixels, RGB uint8: what the agent sees, in detail.

    Rendering steps no physics, so recording leaves the episode unchanged. `pybullet`: the module, or a client
    bound to the environment's physics server where it is not the default one.
    """
    if pybullet is None:
        pybullet = quiet_pybullet()
    image = pybullet.getCameraImage(size, size, viewMatrix=env._view_matrix, projectionMatrix=env._proj_matrix)[2]
    return np.reshape(np.asarray(image, dtype=np.uint8), (size, size, 4))[:, :, :3].copy()


def camera_with_depth(
    env: Any, size: int, pybullet: Any = None, overhead: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The environment's own camera at `size` x `size`, or with `overhead` the camera straight above the tray
    (`camera.view_and_projection`): RGB uint8 (size, size, 3) and the depth buffer float32 (size, size) in [0, 1],
    nonlinear between the near and far planes (OpenGL's convention).

    The arm's start pose hangs above the tray, in the overhead camera's way: the arm is lifted out of its view
    while it renders and put back where it was. Rendering steps no physics, so the episode goes on unchanged.
    """
    if pybullet is None:
        pybullet = quiet_pybullet()
    if not overhead:
        _, _, image, depth, _ = pybullet.getCameraImage(
            size, size, viewMatrix=env._view_matrix, projectionMatrix=env._proj_matrix, physicsClientId=env.cid
        )
    else:
        arm = env._kuka.kukaUid
        position, orientation = pybullet.getBasePositionAndOrientation(arm, physicsClientId=env.cid)
        lifted = (position[0], position[1], position[2] + 100.0)
        pybullet.resetBasePositionAndOrientation(arm, lifted, orientation, physicsClientId=env.cid)
        try:
            view, projection = view_and_projection(overhead=True)
            _, _, image, depth, _ = pybullet.getCameraImage(
                size, size, viewMatrix=view, projectionMatrix=projection, physicsClientId=env.cid
            )
        finally:
            pybullet.resetBasePositionAndOrientation(arm, position, orientation, physicsClientId=env.cid)
    rgb = np.reshape(np.asarray(image, dtype=np.uint8), (size, size, 4))[:, :, :3].copy()
    return rgb, np.reshape(np.asarray(depth, dtype=np.float32), (size, size))
