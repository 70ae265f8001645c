"""Environment workers as Ray actors (`--backend ray`): `RayEnvPool`, the Ray backend of `grasping.pool.EnvPool`,
so that the same `Rollouts` drive them on one machine or a cluster. Imports no torch; Ray itself is an optional
extra (`pip install -e ".[ray]"`), imported when a pool is opened. The actors import this installed package, so
every node of a cluster needs the project installed, not a checkout at the same path."""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from grasping.cli import UsageError, WorkerError
from grasping.environment import CAMERA_SIZE, make_env, render_scene, seed_environment, silenced_output, worker_seed

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for the head node of --ray-address to answer before refusing it (Ray itself retries for
minutes)."""
START_TIMEOUT = 300.0
"""Seconds to wait for the actors to build their environments, before saying the cluster lacks the CPUs."""


def import_ray() -> Any:
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError('--backend ray: Ray is not installed; pip install -e ".[ray]"') from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse in one line, within `timeout` seconds, a --ray-address whose host does not answer on its port.

    "auto" (the cluster this machine belongs to) is left to Ray. A ray:// address (Ray Client) is checked
    at its host and port as well.
    """
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address}: expected the head's ADDRESS:PORT, for example 10.0.0.1:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else error.strerror or type(error).__name__
        raise UsageError(
            f"--ray-address {address}: cannot reach a Ray head there ({reason} within "
            f"{timeout:.0f} s); start one with `ray start --head`, or check the address"
        ) from None


class EnvActor:
    """One environment in a Ray actor, answering reset, step and call as a `ProcessEnvPool` worker does: the camera
    image (a few kilobytes of uint8), the reward and done."""

    def __init__(
        self, seed: int, is_test: bool, max_steps: int, camera_size: int, height: bool, overhead: bool
    ) -> None:
        seed_environment(seed)
        self.env = make_env(is_test, max_steps, camera_size=camera_size, height=height, overhead=overhead)

    def n_actions(self) -> int:
        return int(self.env.action_space.n)

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The Ray node this actor runs on, and its host."""
        import ray

        return f"{ray.get_runtime_context().get_node_id()[:8]} ({os.uname().nodename})"

    def reset(self) -> tuple[np.ndarray, float, bool]:
        return self.env.reset(), 0.0, False

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        obs, reward, done, _ = self.env.step(action)
        return obs, reward, bool(done)  # the reward as the env gives it, as the lecture prints it

    def call(self, function: Callable[..., Any], args: tuple) -> Any:
        return function(self.env, *args)


class RayEnvPool:
    """`num_envs` environments as Ray actors of one CPU each, each stepping as soon as it has its action.

    Joins the cluster at `address`, or starts Ray on this machine. Replies are taken as they come
    (`ray.wait`). An actor that is lost (killed, or its node died) is replaced by a new one with the next
    seed: `results` then gives (index, None, 0.0, False), which `Rollouts` reads as "this episode is lost".
    After `max_replacements` the pool gives up with a WorkerError.
    """

    def __init__(
        self,
        num_envs: int,
        seed: int,
        is_test: bool,
        max_steps: int = 20,
        camera_size: int = CAMERA_SIZE,
        height: bool = False,
        overhead: bool = False,
        address: str | None = None,
        max_replacements: int | None = None,
    ) -> None:
        self.ray = ray = import_ray()
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            if address is not None:
                check_reachable(address)
            try:
                with silenced_output():  # a head that answers but is no Ray head: a line a second from Ray's C++
                    ray.init(
                        address=address,
                        num_cpus=None if address else max(num_envs, os.cpu_count() or 1),
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.ERROR,
                    )
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise UsageError(
                    f"--ray-address {address}: cannot join a Ray cluster there "
                    f"({next(iter(str(error).splitlines()), type(error).__name__)})"
                ) from None
        self.remote_class = ray.remote(num_cpus=1)(EnvActor)
        self.settings = (is_test, max_steps, camera_size, height, overhead)
        self.seed, self.max_replacements = seed, max_replacements if max_replacements is not None else 2 * num_envs
        self.replacements = 0
        self.lost_episodes = 0
        self.actors = [self._actor(worker_seed(seed, index)) for index in range(num_envs)]
        self.pending: dict[Any, int] = {}
        """Each reply still due, by its object reference: the actor's index."""
        try:
            ready, waiting = ray.wait(
                [actor.n_actions.remote() for actor in self.actors], num_returns=num_envs, timeout=START_TIMEOUT
            )
            if waiting:
                raise WorkerError(
                    f"only {len(ready)} of {num_envs} Ray actors started within {START_TIMEOUT:.0f} s: "
                    f"the cluster has {ray.cluster_resources().get('CPU', 0):.0f} CPUs; "
                    "lower --num-envs or add nodes"
                )
            self.n_actions: int = ray.get(ready[0])
        except BaseException:
            self.close()
            raise

    @property
    def num_envs(self) -> int:
        return len(self.actors)

    def describe(self) -> str:
        """Where the actors run, as one line for the log."""
        nodes = Counter(self.ray.get([actor.node.remote() for actor in self.actors]))
        return (
            f"Ray: {self.num_envs} environment actor{'s' if self.num_envs > 1 else ''} on {len(nodes)} "
            f"node{'s' if len(nodes) > 1 else ''}: " + ", ".join(f"{node} x{n}" for node, n in nodes.items())
        )

    def pids(self) -> list[int]:
        """The actors' process ids, on their nodes."""
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def reset(self, index: int) -> None:
        self.pending[self.actors[index].reset.remote()] = index

    def step(self, index: int, action: int) -> None:
        self.pending[self.actors[index].step.remote(int(action))] = index

    def call(self, index: int, function: Callable[..., Any], *args: Any) -> Any:
        """`function(env, *args)` run in actor `index`; call only while no other reply is due from it."""
        return self.ray.get(self.actors[index].call.remote(function, args))

    def scene(self, index: int, size: int = 256) -> np.ndarray:
        """Actor `index`'s scene as `render_scene` draws it; call only while no other reply is due from it."""
        return self.call(index, render_scene, size)

    def poll(self) -> bool:
        return bool(self.pending) and bool(self.ray.wait(list(self.pending), timeout=0)[0])

    def results(self) -> list[tuple[int, np.ndarray | None, float, bool]]:
        """Block until an actor replies; every waiting reply as (index, observation, reward, done), and (index,
        None, 0.0, False) for an actor lost and replaced."""
        ray = self.ray
        ray.wait(list(self.pending), num_returns=1)
        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        replies: list[tuple[int, np.ndarray | None, float, bool]] = []
        for reference in ready:
            index = self.pending.pop(reference)
            try:
                obs, reward, done = ray.get(reference)
            except ray.exceptions.RayActorError as error:
                self._replace(index, error)
                replies.append((index, None, 0.0, False))
                continue
            replies.append((index, obs, reward, done))
        return replies

    def close(self) -> None:
        """Stop the actors, and Ray if this pool started it."""
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors, self.pending = [], {}
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> RayEnvPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _actor(self, seed: int) -> Any:
        return self.remote_class.remote(seed, *self.settings)

    def _replace(self, index: int, error: Exception) -> None:
        self.replacements += 1
        self.lost_episodes += 1
        if self.replacements > self.max_replacements:
            raise WorkerError(
                f"Ray actor {index} was lost, the {self.replacements}th loss in this run, more than "
                f"--num-envs x 2 = {self.max_replacements}: {str(error).splitlines()[0]}"
            )
        for reference in [r for r, i in self.pending.items() if i == index]:
            del self.pending[reference]
        self.actors[index] = self._actor(worker_seed(self.seed, self.num_envs + self.replacements))
