"""Checkpoint files: written atomically, loaded without running pickled code, and the network configuration
they record, so that a script rebuilds a network from the file alone."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import secrets
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from common import DQN, MIN_IMAGE_SIZE, NETWORKS, SCREEN_SIZE, Observation
from grasping.cli import CheckpointError, UsageError

CHECKPOINT_KEYS = ("policy_net_state_dict", "target_net_state_dict", "optimizer_policy_net_state_dict")
"""The lecture's checkpoint keys; DQN checkpoints written here always carry them, the pose agent's all but the
target network's (it has none)."""


def resume_path(checkpoint: Path) -> Path:
    """Where a run keeps its resumable state: `policy_dqn.pt` -> `policy_dqn.resume.pt`."""
    return checkpoint.with_name(checkpoint.stem + ".resume" + checkpoint.suffix)


def networks_state(policy_net: DQN, target_net: DQN, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The lecture's checkpoint content, under its key names, and the network's `config`."""
    state = dict(zip(CHECKPOINT_KEYS, (policy_net.state_dict(), target_net.state_dict(), optimizer.state_dict())))
    return {**state, "config": policy_net.config}


LECTURE_CONFIG = {
    "timestep_input": False,
    "image_size": SCREEN_SIZE,
    "rgb": False,
    "network": DQN.network,
    "first_frame_input": False,
    "pose_input": False,
}
"""The lecture's network as a checkpoint's `config` records it; a key a checkpoint lacks takes its value here."""


def checkpoint_agent(checkpoint: dict[str, Any]) -> str:
    """Which agent wrote a checkpoint: its config's 'agent' ('pose'), or 'dqn' for the lecture's, which records none."""
    config = checkpoint.get("config", {})
    return str(config.get("agent", "dqn")) if isinstance(config, dict) else "dqn"


def checkpoint_config(checkpoint: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """The network configuration a checkpoint records, completed from the lecture's (older files record less).

    A checkpoint of another agent (grasping/pose_agent.py) is refused, naming it.
    """
    if (agent := checkpoint_agent(checkpoint)) != "dqn":
        raise CheckpointError(f"{path}: a checkpoint of --agent {agent}, not of the lecture's DQN")
    saved = checkpoint.get("config", {})
    config = {**LECTURE_CONFIG, **saved} if isinstance(saved, dict) else None
    flags = ("timestep_input", "rgb", "first_frame_input", "pose_input")
    if (
        config is None
        or config.keys() != LECTURE_CONFIG.keys()
        or not all(isinstance(config[flag], bool) for flag in flags)
        or type(config["image_size"]) is not int
        or config["image_size"] < MIN_IMAGE_SIZE
        or not isinstance(config["network"], str)
        or config["network"] not in NETWORKS
    ):
        raise CheckpointError(f"{path}: its 'config' is not a network configuration: {saved!r}")
    return config


def observation_of(config: dict[str, Any]) -> Observation:
    """The frames a network of this checkpoint `config` takes."""
    return Observation(config["image_size"], config["rgb"], config.get("height", False), config.get("overhead", False))


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


def load_checkpoint(path: Path, device: torch.device | str, required_keys: tuple[str, ...]) -> dict[str, Any]:
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
