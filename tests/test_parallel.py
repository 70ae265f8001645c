"""Environment workers: seeding, failures, and both scripts with --num-envs 2 on the real environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pybullet
import pytest
import torch
from conftest import ROOT, read_events, run_script

from benchmarks.simulator import gripper_and_objects
from common import seed_everything
from grasping.checkpoints import CHECKPOINT_KEYS, load_checkpoint
from grasping.cli import WorkerError
from grasping.environment import make_env, worker_seed
from grasping.process_pool import ProcessEnvPool

pytestmark = pytest.mark.slow  # every test here runs the scripts or workers end to end

CPU = torch.device("cpu")
FAST = ("--max-steps", "3", "--batch-size", "4", "--device", "cpu")


def first_frames(seed: int) -> list[np.ndarray]:
    """The first camera image each of two workers sees after its first reset."""
    with ProcessEnvPool(2, seed, is_test=False) as pool:
        pool.reset(0)
        pool.reset(1)
        frames: dict[int, np.ndarray] = {}
        while len(frames) < 2:
            frames.update((index, frame) for index, frame, _, _ in pool.results() if frame is not None)
    return [frames[0], frames[1]]


def test_workers_see_their_own_scenes_and_a_seed_repeats_them():
    first = first_frames(seed=5)
    again = first_frames(seed=5)
    assert first[0].shape == (48, 48, 3) and first[0].dtype == np.uint8, "the camera image, preprocessed by the learner"
    assert not np.array_equal(first[0], first[1]), "two workers of one run see different scenes"
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1]), "the same seed, the same scenes"
    assert not np.array_equal(first_frames(seed=6)[0], first[0])


def objects_in_scene(seed: int) -> list[str]:
    """The names of the objects a worker with this seed finds in the tray at its first reset."""
    seed_everything(seed)
    env = make_env(is_test=False)
    try:
        env.reset()
        return sorted(pybullet.getBodyInfo(uid)[1].decode() for uid in env._objectUids)
    finally:
        env.close()


def test_worker_seeds_pick_different_objects():
    seeds = [worker_seed(1, index) for index in range(4)]
    assert len(set(seeds)) == 4 and seeds == [worker_seed(1, index) for index in range(4)]
    assert worker_seed(2, 0) not in seeds
    scenes = [objects_in_scene(seed) for seed in seeds]
    assert all(len(scene) == 5 for scene in scenes)
    assert len({tuple(scene) for scene in scenes}) > 1, scenes
    assert objects_in_scene(seeds[0]) == scenes[0]


def test_a_worker_runs_a_function_on_its_environment_such_as_where_its_gripper_and_objects_are():
    with ProcessEnvPool(1, 3, is_test=False) as pool:
        pool.reset(0)
        pool.results()
        gripper, objects = pool.call(0, gripper_and_objects)
        assert gripper.shape == (2,) and objects.shape == (5, 2)
        assert np.all((objects[:, 0] > 0.3) & (objects[:, 0] < 0.8) & (np.abs(objects[:, 1]) < 0.3)), "in the tray"
        for action, axis, sign in ((2, 0, 1), (3, 1, -1)):  # x+, then y-
            pool.step(0, action)
            pool.results()
            moved = pool.call(0, gripper_and_objects)[0] - gripper
            assert sign * moved[axis] > max(0.01, 2 * abs(moved[1 - axis])), (action, moved)  # the arm lags a little
            gripper = gripper + moved


def test_a_killed_worker_is_named_in_one_clear_error():
    with ProcessEnvPool(2, 1, is_test=False) as pool:
        pool.reset(0)
        pool.reset(1)
        replied: set[int] = set()
        while len(replied) < 2:
            replied.update(index for index, *_ in pool.results())
        victim = pool.pids()[1]
        os.kill(victim, signal.SIGKILL)
        pool.step(0, 0)
        with pytest.raises(
            WorkerError, match=rf"^environment worker 1 \(pid {victim}\) died: killed by signal SIGKILL$"
        ):
            while True:
                for index, *_ in pool.results():
                    pool.step(index, 0)


def test_an_error_inside_a_worker_comes_back_as_one_line():
    with ProcessEnvPool(1, 1, is_test=False) as pool:
        pool.reset(0)
        pool.results()
        pool.step(0, 99)  # the environment has 7 actions; its own code raises
        with pytest.raises(WorkerError, match=r"^environment worker 0 failed: IndexError: [^\n]*$"):
            pool.results()


def worker_pids(pid: int) -> list[int]:
    """The environment workers of process `pid`: its children started by multiprocessing's spawn."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_training_and_evaluation_with_two_workers(workdir):
    result = run_script("train", "--episodes", "6", "--num-envs", "2", "--logdir", "runs/p", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "with 2 environments" in result.stdout
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    assert state["episode"] == 6 and state["global_step"] >= 18
    scalars, _ = read_events(workdir / "runs" / "p")
    assert [step for step, _ in scalars["epsilon"]] == list(range(6))
    assert all(value == 3 for _, value in scalars["episode_length"])
    assert "loss" in scalars, "the learner trained while the workers collected"

    result = run_script(
        "eval",
        "--episodes",
        "3",
        "--num-envs",
        "2",
        "--device",
        "cpu",
        "--checkpoint",
        "policy_dqn.resume.pt",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == ["Episode: 1", "Episode: 2", "Episode: 3"]
    assert all(line.split("reward: ")[1] in ("0", "1") for line in lines[:3])
    assert lines[3].startswith("Actions: ") and lines[3].endswith("/3 episodes repeat one action throughout")
    assert lines[4].startswith("Success rate: ") and "/3 = " in lines[4] and len(lines) == 5


def test_evaluation_with_workers_repeats_itself(workdir):
    args = ("eval", "--policy", "random", "--episodes", "6", "--num-envs", "2", "--seed", "3")
    first, second = run_script(*args, cwd=workdir), run_script(*args, cwd=workdir)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout, "the same seed and --num-envs give the same episodes, in order"
    lines = first.stdout.splitlines()
    assert [line.split(",")[0] for line in lines[:6]] == [f"Episode: {i}" for i in range(1, 7)]
    assert lines[6].startswith("Actions: ") and "random policy on test objects" in lines[7]


def test_a_worker_killed_during_training_gives_one_line_and_keeps_the_state(workdir):
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bullet_kuka_train.py"),
            "--episodes",
            "1000",
            "--num-envs",
            "2",
            "--logdir",
            "runs/k",
            *FAST,
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((workdir / "runs" / "k").glob("events.out.tfevents.*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # a few episodes into the loop
        victim = worker_pids(process.pid)[1]
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()

    assert process.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"(pid {victim}) died: killed by signal SIGKILL" in lines[0]
    assert "policy_dqn.resume.pt" in lines[0] and "--resume" in lines[0]
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    scalars, _ = read_events(workdir / "runs" / "k")
    assert [step for step, _ in scalars["epsilon"]] == list(range(state["episode"]))
