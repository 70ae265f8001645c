"""What the loops drive: `EnvPool`, environments that each step as soon as they are given an action, and
`open_pool`, which opens the backend `--backend` names. Imports no torch.

The two backends, `ProcessEnvPool` (worker processes on this machine) and `RayEnvPool` (Ray actors, on this
machine or a cluster), follow `EnvPool` without importing this module or each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from grasping.environment import CAMERA_SIZE
from grasping.process_pool import ProcessEnvPool

Reply = tuple[int, "np.ndarray | None", float, bool]
"""(environment index, camera image (H, W, 3) uint8, reward, done); the image is None when the environment was lost
and replaced (a Ray actor), which `Rollouts` reads as "this episode is lost"."""

BACKENDS = ("local", "ray")
"""The values of --backend."""


class EnvPool(Protocol):
    """`num_envs` environments, stepped asynchronously: send `reset` and `step` requests to environment indices,
    collect the replies with `results`.

    Between a reply and the next request to the same environment, `call` and `scene` may ask it about its
    simulation. `close` stops every environment; a pool is also a context manager.
    """

    n_actions: int
    """The environments' discrete actions: 7 with the height hack."""

    @property
    def num_envs(self) -> int: ...

    def reset(self, index: int) -> None:
        """Ask environment `index` to start a new episode; its reply carries the first camera image."""
        ...

    def step(self, index: int, action: int) -> None:
        """Ask environment `index` to take `action`; its reply carries the image, reward and done."""
        ...

    def results(self) -> list[Reply]:
        """Block until an environment replies; every waiting reply."""
        ...

    def poll(self) -> bool:
        """Whether a reply is waiting, without blocking."""
        ...

    def call(self, index: int, function: Callable[..., Any], *args: Any) -> Any:
        """`function(env, *args)` run where environment `index` lives, and its result; `function` must be
        importable by name there."""
        ...

    def scene(self, index: int, size: int = 256) -> np.ndarray:
        """Environment `index`'s scene as `grasping.environment.render_scene` draws it, (size, size, 3) uint8."""
        ...

    def pids(self) -> list[int]:
        """The process ids of the environments (on their nodes, for Ray)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> EnvPool: ...

    def __exit__(self, *exc_info: Any) -> None: ...


def open_pool(
    backend: str,
    num_envs: int,
    seed: int,
    is_test: bool,
    max_steps: int = 20,
    camera_size: int = CAMERA_SIZE,
    height: bool = False,
    overhead: bool = False,
    ray_address: str | None = None,
) -> EnvPool:
    """The environments `--backend` names: this machine's worker processes ("local") or Ray actors ("ray"); Ray,
    an optional extra, is imported only then. Worker i is seeded with `worker_seed(seed, i)`."""
    if backend == "ray":
        from grasping.ray_pool import RayEnvPool

        return RayEnvPool(num_envs, seed, is_test, max_steps, camera_size, height, overhead, address=ray_address)
    return ProcessEnvPool(num_envs, seed, is_test, max_steps, camera_size, height, overhead)


def in_process(backend: str, num_envs: int) -> bool:
    """Whether the episodes run in the caller's process, as in the lecture: one environment, local backend."""
    return num_envs == 1 and backend == "local"
