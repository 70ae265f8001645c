"""pybullet's KukaDiverseObjectEnv behind the Gymnasium API, registered as `KukaDiverseObjectGrasp-v0`.

    import gymnasium
    import grasping.gymnasium_env  # registers the id

    env = gymnasium.make("KukaDiverseObjectGrasp-v0", is_test=True)
    observation, info = env.reset(seed=0)   # (48, 48, 3) uint8: the environment's own camera
    observation, reward, terminated, truncated, info = env.step(env.action_space.sample())

Needs the `gymnasium` extra (`pip install -e '.[gymnasium]'`); imports no torch. The lecture's scripts keep
pybullet's gym class, as the lecture does. Each environment has a physics client of its own, so several may
share a process (`SyncVectorEnv`, SB3's `DummyVecEnv`) as well as run in processes of their own
(`AsyncVectorEnv`, `SubprocVecEnv`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import random
import sys
from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from grasping.environment import CAMERA_SIZE, grasp_env_class, quiet_pybullet, render_scene

ENV_ID = "KukaDiverseObjectGrasp-v0"

RENDER_SIZE = 256
"""Side of the image `render()` returns: the environment's camera, in more detail than the observation."""

PYBULLET_USERS = ("pybullet_envs.bullet.kuka_diverse_object_gym_env", "pybullet_envs.bullet.kuka")
"""The modules of pybullet's class that call pybullet's functions as `p.function(...)`, on the default client."""


class BoundClient:
    """pybullet's module with every function bound to one physics client, like pybullet_utils' BulletClient but
    for a client that is already connected."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.pybullet = quiet_pybullet()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.pybullet, name)
        if inspect.isbuiltin(attribute):
            return functools.partial(attribute, physicsClientId=self.client_id)
        return attribute

    def loadURDF(self, file_name: str, *arguments: Any, **keywords: Any) -> int:  # pybullet's name for it
        """pybullet's loadURDF; its older form, the position and quaternion as 7 numbers after the file name (the
        class loads its table and tray so), takes no client id, and is given as keywords."""
        if len(arguments) == 7:
            keywords.update(basePosition=arguments[:3], baseOrientation=arguments[3:])
            arguments = ()
        return self.pybullet.loadURDF(file_name, *arguments, physicsClientId=self.client_id, **keywords)


@contextlib.contextmanager
def bound_to(client: BoundClient) -> Iterator[None]:
    """For the block, pybullet's class drives `client` instead of the default client."""
    modules = [sys.modules[name] for name in PYBULLET_USERS]
    saved = [module.p for module in modules]
    for module in modules:
        module.p = client  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, default in zip(modules, saved):
            module.p = default  # type: ignore[attr-defined]


class KukaDiverseObjectGrasp(gymnasium.Env[np.ndarray, np.int64]):
    """Grasp one of five objects in a tray: pybullet's KukaDiverseObjectEnv with discrete actions.

    - Observation: the camera image, `Box(0, 255, (image_size, image_size, 3), uint8)`.
    - Actions: `Discrete(7)` with the height hack (the gripper descends by itself; stay, -x, +x, -y, +y,
      turn left, turn right), `Discrete(9)` without it (down and up added before the turns).
    - Reward: 1 when an object is above 0.2 m after the grasp, else 0.
    - `terminated`: a grasp was attempted (the gripper came within 0.1 m of the floor);
      `truncated`: `max_steps` actions without one.
    - `info`: `grasp_attempted` and `grasp_success` (bool) after each step.

    `reset(seed=...)` fixes the scene from the environment's own generator alone: pybullet's class places
    objects with the global `random` and NumPy generators, which are seeded here for the reset and then
    put back as they were, so that neither what ran before in the process nor the caller's use of
    those generators changes a scene.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        is_test: bool = False,
        max_steps: int = 20,
        image_size: int = CAMERA_SIZE,
        height_hack: bool = True,
        render_mode: str | None = None,
    ) -> None:
        """`is_test`: the 100 held-out test objects instead of the 900 training ones; `max_steps`: actions before
        truncation (pybullet's default is 8, the lecture's 20); `image_size`: the camera image's side;
        `height_hack`: False makes the policy move the gripper up and down itself."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, not {render_mode!r}")
        if max_steps < 1 or image_size < 1:
            raise ValueError(f"max_steps and image_size must be positive, not {max_steps} and {image_size}")
        self.render_mode = render_mode
        self._env = grasp_env_class()(
            renders=False,
            isDiscrete=True,
            removeHeightHack=not height_hack,
            maxSteps=max_steps,
            isTest=is_test,
            width=image_size,
            height=image_size,
        )
        self._client = BoundClient(self._env.cid)
        self.observation_space = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.action_space = spaces.Discrete(9 if not height_hack else 7)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        scene_seed = int(self.np_random.integers(2**32))
        saved = random.getstate(), np.random.get_state()
        try:
            random.seed(scene_seed)
            np.random.seed(scene_seed)
            with bound_to(self._client):
                observation = self._env.reset()
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        return self._image(observation), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        with bound_to(self._client):
            observation, reward, done, _ = self._env.step(int(action))
        terminated = bool(self._env._attempted_grasp)
        info = {"grasp_attempted": terminated, "grasp_success": bool(reward > 0)}
        return self._image(observation), float(reward), terminated, bool(done) and not terminated, info

    def render(self) -> np.ndarray | None:
        """The environment's camera at 256x256 (`render_mode="rgb_array"`), or None without a render mode."""
        if self.render_mode is None:
            return None
        return render_scene(self._env, RENDER_SIZE, self._client)

    def close(self) -> None:
        self._env.close()

    @staticmethod
    def _image(observation: Any) -> np.ndarray:
        return np.ascontiguousarray(observation, dtype=np.uint8)


gymnasium.register(id=ENV_ID, entry_point=f"{__name__}:KukaDiverseObjectGrasp")
