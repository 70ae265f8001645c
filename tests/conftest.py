"""Shared helpers: run the scripts as real processes and read the TensorBoard files they write."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_script(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run bullet_kuka_{script}.py with the test interpreter, as a user would from `cwd`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(ROOT / f"bullet_kuka_{script}.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
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
    """Scalars {tag: [(step, value)]} and the tags of other summaries in every event file of `logdir`."""
    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    other_tags: set[str] = set()
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            record = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars[value.tag].append((event.step, value.simple_value))
                else:
                    other_tags.add(value.tag)
    return scalars, other_tags


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder to run a script in, as a user's project folder."""
    return tmp_path
