"""--backend ray: environment workers as Ray actors, with a real local Ray. Skipped where Ray is not installed
(pip install -e ".[ray]"), except the one-line message that says how to install it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, run_script

from grasping.checkpoints import load_checkpoint, resume_path

pytestmark = pytest.mark.slow  # every test here runs the scripts or workers end to end

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
TINY = ("--max-steps", "3", "--batch-size", "4", "--device", "cpu", "--clip-every", "0")


@needs_ray
def test_training_and_evaluation_run_end_to_end_on_ray_actors(workdir):
    result = run_script("train", "--backend", "ray", "--num-envs", "2", "--episodes", "4", *TINY, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "Ray: 2 environment actors on 1 node: " in result.stdout
    assert "Throughput: " in result.stdout and "with 2 environments" in result.stdout
    assert "Traceback" not in result.stderr and "(raylet)" not in result.stderr + result.stdout
    state = load_checkpoint(resume_path(workdir / "policy_dqn.pt"), "cpu", ("episode", "replay_memory"))
    assert state["episode"] == 4

    resumed = run_script(
        "train", "--backend", "ray", "--num-envs", "2", "--episodes", "6", "--resume", *TINY, cwd=workdir
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from policy_dqn.resume.pt at episode 4 (replay memory restored: " in resumed.stdout

    evaluated = run_script(
        "eval",
        "--backend",
        "ray",
        "--num-envs",
        "2",
        "--episodes",
        "3",
        "--device",
        "cpu",
        "--checkpoint",
        "policy_dqn.resume.pt",
        cwd=workdir,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    numbers = [line.split(",")[0] for line in evaluated.stdout.splitlines() if line.startswith("Episode: ")]
    assert numbers == ["Episode: 1", "Episode: 2", "Episode: 3"], "printed in episode order"
    assert "Success rate: " in evaluated.stdout and "greedy policy on test objects" in evaluated.stdout


@needs_ray
def test_the_pose_agent_trains_on_ray_actors(workdir):
    result = run_script(
        "train",
        "--backend",
        "ray",
        "--num-envs",
        "2",
        "--agent",
        "pose",
        "--image-size",
        "48",
        "--episodes",
        "3",
        "--max-steps",
        "3",
        "--device",
        "cpu",
        "--clip-every",
        "0",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(resume_path(workdir / "policy_dqn.pt"), "cpu", ("episode", "replay_memory", "config"))
    assert state["config"]["agent"] == "pose" and state["episode"] == 3
    assert len(state["replay_memory"]["rewards"]) == 3, "each finished episode is one sample"


@needs_ray
def test_a_killed_actor_is_replaced_and_the_run_finishes_with_the_loss_counted(workdir):
    log = workdir / "out.txt"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bullet_kuka_train.py"),
                "--backend",
                "ray",
                "--num-envs",
                "2",
                "--episodes",
                "6",
                *TINY[2:],
            ],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        actors = _actor_processes(log, process)
        time.sleep(3)  # mid-episode
        os.kill(actors[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=600)
    stdout = log.read_text()
    assert process.returncode == 0, stderr
    assert (
        "Environment worker 0 was lost and replaced: its unfinished episode is dropped (1 so far)" in stdout
        or "Environment worker 1 was lost and replaced: its unfinished episode is dropped (1 so far)" in stdout
    ), stdout
    state = load_checkpoint(resume_path(workdir / "policy_dqn.pt"), "cpu", ("episode",))
    assert state["episode"] == 6


@needs_ray
def test_an_evaluation_plays_a_lost_episode_again():
    from common import Observation
    from grasping.evaluation import play_in_parallel, random_policy
    from grasping.ray_pool import RayEnvPool

    with RayEnvPool(2, 1, is_test=True) as pool:
        kill = {"after": 4}
        choose = random_policy(pool.n_actions, 1, 2)

        def policy(states, indices, timesteps):
            kill["after"] -= len(indices)
            if kill["after"] < 0 < kill.setdefault("left", 1):
                kill["left"] = 0
                pool.ray.kill(pool.actors[1])
            return choose(states, indices, timesteps)

        result = play_in_parallel(pool, Observation(), policy, 4)
        assert pool.replacements == 1
    assert result.lost == 1 and len(result.rewards) == 4 and all(sequence for sequence in result.sequences)


@needs_ray
def test_the_throughput_benchmark_measures_ray_actors(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "throughput.py"),
            "--backend",
            "ray",
            "--max-envs",
            "1",
            "--episodes-per-env",
            "1",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Backend: ray" in result.stdout
    [row] = [line for line in result.stdout.splitlines() if line.startswith("| 1 |")]
    assert float(row.split("|")[2]) > 0 and float(row.split("|")[4]) > 0, row
    [memory] = [line for line in result.stdout.splitlines() if line.startswith("Environment worker (ray): ")]
    assert memory.endswith("torch loaded in it: no"), memory


@pytest.mark.parametrize("script", ["train", "eval"])
def test_backend_ray_without_ray_installed_says_how_to_install_it(workdir, script):
    code = (
        "import runpy, sys; "
        "sys.modules['ray'] = None; "  # as if Ray were not installed: `import ray` fails
        f"sys.argv = ['bullet_kuka_{script}.py', '--backend', 'ray', '--num-envs', '2', '--policy', 'random'] "
        f"if '{script}' == 'eval' else ['bullet_kuka_train.py', '--backend', 'ray', '--num-envs', '2']; "
        f"runpy.run_path({str(ROOT / f'bullet_kuka_{script}.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, '--backend ray: Ray is not installed; pip install -e ".[ray]"')
    assert not (workdir / "policy_dqn.resume.pt").exists()


@pytest.mark.parametrize("script", ["train", "eval"])
def test_ray_address_without_backend_ray_is_refused(workdir, script):
    assert_one_line_error(
        run_script(script, "--ray-address", "127.0.0.1:6379", cwd=workdir),
        "--ray-address: applies to --backend ray only",
    )


def _actor_processes(log: Path, process: subprocess.Popen) -> list[int]:
    """The pids of the run's environment actors, once it has said where they run."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if "Ray: 2 environment actors" in log.read_text():
            found = subprocess.run(["pgrep", "-f", "ray::EnvActor"], capture_output=True, text=True).stdout.split()
            if len(found) >= 2:
                return [int(pid) for pid in found]
        time.sleep(0.5)
    raise AssertionError(f"no actors: {log.read_text()}")


@needs_ray
@pytest.mark.parametrize("address", ["127.0.0.1:1", "10.255.255.1:6379", "no-port"])
def test_an_unreachable_ray_address_is_refused_in_one_line_within_seconds(workdir, address):
    started = time.monotonic()
    result = run_script("train", "--backend", "ray", "--ray-address", address, "--num-envs", "2", cwd=workdir)
    assert_one_line_error(result, f"--ray-address {address}: ")
    assert time.monotonic() - started < 60, "not Ray's minutes of retries"
    assert not (workdir / "policy_dqn.resume.pt").exists()
