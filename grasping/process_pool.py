"""Environments in worker processes on this machine: `ProcessEnvPool`, the local backend of `grasping.pool.EnvPool`.

Imports no torch, and keeps the parent's main script from being imported again in each worker, so that a worker
holds pybullet and its environment only. The workers send camera images as the environment gives them; the
learner's process preprocesses them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from grasping.cli import STOP_SIGNALS, WorkerError
from grasping.environment import CAMERA_SIZE, make_env, render_scene, seed_environment, worker_seed


def _env_worker(
    connection: Connection, seed: int, is_test: bool, max_steps: int, camera_size: int, height: bool, overhead: bool
) -> None:
    """One worker process: its own environment, answering ("reset",) and ("step", action) over a pipe.

    Replies ("observation", obs, reward, done) with the camera image (H, W, 3) uint8, 6,912 bytes at 48x48;
    ("call", function, args) is answered with ("result", function(env, *args)).
    """
    env = None
    try:
        seed_environment(seed)
        env = make_env(is_test, max_steps, camera_size=camera_size, height=height, overhead=overhead)
        connection.send(("ready", env.action_space.n))
        while True:
            command = connection.recv()
            if command[0] == "reset":
                connection.send(("observation", env.reset(), 0, False))
            elif command[0] == "step":
                obs, reward, done, _ = env.step(command[1])
                connection.send(("observation", obs, reward, bool(done)))  # the reward as the env gives it
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
    saved: dict[str, Any] = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


class ProcessEnvPool:
    """`num_envs` environments, one per process, each stepping as soon as it is given its action.

    Unlike gym's lockstep AsyncVectorEnv, a worker that is resetting (about 0.8 s of physics)
    holds up no other. Send requests with `reset` and `step`, collect replies with `results`.
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
    ) -> None:
        """`camera_size`: the side of the camera images the workers render (`Observation.camera_size`); `height`:
        whether they add the height channel (`Observation.height`); `overhead`: whether they render from the camera
        above the tray (`Observation.overhead`)."""
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads or CUDA
        self.connections: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        try:
            for index in range(num_envs):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_env_worker,
                    args=(child_end, worker_seed(seed, index), is_test, max_steps, camera_size, height, overhead),
                    name=f"env-worker-{index}",
                    daemon=True,
                )
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
        return [process.pid for process in self.processes if process.pid is not None]

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

    def results(self) -> list[tuple[int, np.ndarray | None, float, bool]]:
        """Block until a worker replies; return every waiting reply as (index, observation, reward, done)."""
        ready = wait(self.connections + [p.sentinel for p in self.processes])
        replies: list[tuple[int, np.ndarray | None, float, bool]] = []
        for index, connection in enumerate(self.connections):
            if connection in ready or self.processes[index].sentinel in ready:
                _, obs, reward, done = self._receive(index)
                replies.append((index, obs, reward, done))
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

    def __enter__(self) -> ProcessEnvPool:
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
