"""Shared helpers: run the scripts as real processes and read the TensorBoard files they write."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common import Batch, ReplayMemory
from grasping.environment import quiet_pybullet

ROOT = Path(__file__).resolve().parent.parent
"""The project folder, where the scripts are."""

T = TypeVar("T")


def taken(result: T | None) -> T:
    """The result of a learning step that must have been taken (optimize_model, a refit), not None."""
    assert result is not None, "no step was taken"
    return result


def run_script(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run bullet_kuka_{script}.py with the test interpreter, as a user would from `cwd`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(ROOT / f"bullet_kuka_{script}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A non-zero exit with exactly one line on stderr, no traceback, naming what is wrong."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_events(logdir: Path) -> tuple[dict[str, list[tuple[int, float]]], set[str]]:
    """Scalars {tag: [(step, value)]} and the tags of other summaries in every event file of `logdir`, read with
    tensorboard's own reader, every event kept (none sampled away, none purged as orphaned)."""
    accumulator = EventAccumulator(
        str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}, purge_orphaned_data=False
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for tag in tags["scalars"]:
        scalars[tag] = [(event.step, event.value) for event in accumulator.Scalars(tag)]
    other_tags = {tag for kind, names in tags.items() if kind != "scalars" and isinstance(names, list) for tag in names}
    return scalars, other_tags


def stream_transitions(memory: ReplayMemory, stream: int, n_step: int = 1, gamma: float = 1.0) -> Batch:
    """Every transition `memory.sample` could draw from `stream`, oldest first, as one batch."""
    steps = np.arange(memory.oldest[stream], max(memory.oldest[stream], memory.pushed[stream] - (n_step - 1)))
    return memory.gather(np.full(len(steps), stream), steps, n_step, gamma)


def clear_tray(env) -> None:
    """Move the scene's objects far from the tray, so that only its floor (and the arm) is left in view."""
    pybullet = quiet_pybullet()
    for uid in env._objectUids:
        pybullet.resetBasePositionAndOrientation(uid, (3.0, 3.0, 0.0), (0, 0, 0, 1))


BOX_CENTRE, BOX_HALF = (0.60, 0.05), (0.02, 0.03, 0.025)
"""A box on the tray's floor: its centre's (x, y) in metres, and its half extents (x, y, z)."""


def add_box(centre: tuple[float, float], half: tuple[float, float, float], bottom_z: float) -> None:
    """A static red box with half extents `half` (x, y, z) in metres, centred on `centre` (x, y), its bottom at
    `bottom_z`."""
    pybullet = quiet_pybullet()
    shape = pybullet.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half)
    visual = pybullet.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=(1, 0, 0, 1))
    pybullet.createMultiBody(0, shape, visual, (*centre, bottom_z + half[2]))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder to run a script in, as a user's project folder."""
    return tmp_path
