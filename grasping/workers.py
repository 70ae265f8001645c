"""Environments in worker processes: `EnvPool`. Imports no torch, and keeps the parent's main script from being
imported again in each worker, so that a worker holds pybullet and its environment only."""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Optional

import numpy as np

from grasping.cli import STOP_SIGNALS, WorkerError
from grasping.environment import Observation, make_env, render_scene, seed_environment


def worker_seed(seed: int, index: int) -> int:
    """The seed of environment worker `index` in a run seeded with `seed`: distinct per worker, fixed per pair."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _env_worker(connection: Connection, seed: int, is_test: bool, max_steps: int, observation: Observation) -> None:
    """One worker process: its own environment, answering ("reset",) and ("step", action) over a pipe.

    Replies ("frame", frame, reward, done) with the frame preprocessed for `observation`, so that
    the pipe carries 1,600 bytes a step with the lecture's; ("call", function, args) is answered with
    ("result", function(env, *args)).
    """
    env = None
    try:
        seed_environment(seed)
        env = make_env(is_test, max_steps, camera_size=observation.camera_size)
        connection.send(("ready", env.action_space.n))
        while True:
            command = connection.recv()
            if command[0] == "reset":
                connection.send(("frame", observation.preprocess(env.reset()), 0, False))
            elif command[0] == "step":
                obs, reward, done, _ = env.step(command[1])
                connection.send(("frame", observation.preprocess(obs), reward, bool(done)))
            elif command[0] == "call":
                connection.send(("result", command[1](env, *command[2])))
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


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """While a worker is started, hide which script the parent runs.

    A spawned child imports the parent's main script again, in case the target was defined there; the
    scripts import torch (about 0.5 GB resident), and the worker's target lives in this module. Anything
    sent to a worker must therefore come from an importable module, not from the script being run.
    """
    main = sys.modules["__main__"]
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def open_environments(backend: str, num_envs: int, seed: int, is_test: bool, max_steps: int,
                      observation: Observation, ray_address: Optional[str] = None, renders: bool = False
                      ) -> tuple[Any, int, bool]:
    """(environments, number of actions, in this process): the lecture's one environment in this process when
    `num_envs` is 1 on the local backend (the caller has seeded it), otherwise `open_pool`'s workers."""
    if num_envs == 1 and backend == "local":
        env = make_env(is_test, max_steps, renders=renders, camera_size=observation.camera_size)
        return env, env.action_space.n, True
    pool = open_pool(backend, num_envs, seed, is_test, max_steps, observation, ray_address)
    return pool, pool.n_actions, False


def open_pool(backend: str, num_envs: int, seed: int, is_test: bool, max_steps: int = 20,
              observation: Optional[Observation] = None, ray_address: Optional[str] = None) -> Any:
    """The environment workers `--backend` names: this machine's processes ("local", `EnvPool`) or Ray actors
    ("ray", grasping.ray_workers.RayEnvPool, imported only then), with the same interface."""
    if backend == "ray":
        from grasping.ray_workers import RayEnvPool  # the optional extra
        return RayEnvPool(num_envs, seed, is_test, max_steps, observation, address=ray_address)
    return EnvPool(num_envs, seed, is_test, max_steps, observation)


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
                    with _main_script_hidden():
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

    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [process.pid for process in self.processes]

    def reset(self, index: int) -> None:
        """Ask worker `index` to start a new episode; its reply carries the first frame."""
        self._send(index, ("reset",))

    def step(self, index: int, action: int) -> None:
        """Ask worker `index` to take `action`; its reply carries the frame, reward and done."""
        self._send(index, ("step", int(action)))

    def call(self, index: int, function: Callable[..., Any], *args: Any) -> Any:
        """`function(env, *args)` run in worker `index` on its environment, and its result; call only while no
        other reply is due from that worker. `function` must be importable by name (see `_main_script_hidden`)."""
        self._send(index, ("call", function, args))
        return self._receive(index)[1]

    def scene(self, index: int, size: int = 256) -> np.ndarray:
        """Worker `index`'s scene as `render_scene` draws it; call only while no other reply is due from it."""
        return self.call(index, render_scene, size)

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
