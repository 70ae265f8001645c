"""The command line: argument types, one-line errors, the device flag, and the signals that stop a run. Imports
no torch (the environment workers import this module); `resolve_device` imports it when called."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C and a polite `kill` (or a batch scheduler's time limit): training saves its state on either."""


class UsageError(Exception):
    """Bad input the user can fix. Scripts print it as one line and exit non-zero."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the network."""


class WorkerError(RuntimeError):
    """An environment worker process failed or died; the message names it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler's time limit): the run stops and saves its state as on Ctrl-C."""


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler: stop as on Ctrl-C, as `Terminated`."""
    raise Terminated


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block ends, so that an episode is counted, logged and saved whole."""
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:  # started with SIGINT ignored (nohup, a background job): keep it so
            signal.signal(signum, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            raise Terminated if received[0] == signal.SIGTERM else KeyboardInterrupt


def resolve_device(name: str) -> torch.device:
    """--device: 'auto' picks CUDA when a GPU is usable; asking for 'cuda' without one is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda: no usable CUDA GPU here (torch.cuda.is_available() is False); use --device cpu"
        )
    return torch.device(name)


def exit_status(stop: KeyboardInterrupt) -> int:
    """The exit status of a run stopped by Ctrl-C (130) or SIGTERM (143), as a shell reports it."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


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


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and --ray-address, the same for both scripts."""
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where the environments run: worker processes on this machine, or Ray actors "
        '(pip install -e ".[ray]"), which may span a cluster',
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="--backend ray: join this Ray cluster (the head's ADDRESS:PORT, as `ray start --head` "
        "prints it); without it Ray starts on this machine",
    )


def check_backend_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse --ray-address without --backend ray, and the in-process options with Ray."""
    if args.ray_address is not None and args.backend != "ray":
        parser.error("argument --ray-address: applies to --backend ray only")
    for flag in ("render", "gif"):
        if args.backend == "ray" and getattr(args, flag, None):
            parser.error(
                f"argument --{flag}: works with the episodes played in this process; use --backend local --num-envs 1"
            )


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
