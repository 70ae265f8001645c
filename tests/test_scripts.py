"""End to end: the training and evaluation scripts as a user runs them, on the real environment."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error, read_events, run_script
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from grasping.checkpoints import CHECKPOINT_KEYS, load_checkpoint

pytestmark = pytest.mark.slow  # every test here runs the scripts or workers end to end

CPU = torch.device("cpu")
# Short episodes: with 3 actions the gripper never reaches the objects, so an episode costs ~1 s.
FAST = ("--max-steps", "3", "--batch-size", "4", "--device", "cpu")
LOGGED_EVERY_EPISODE = ("epsilon", "success_rate_last_100", "episode_length", "steps_per_second", "loss", "mean_q")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training run of 10 episodes, with a greedy clip every 5, shared by the tests that read what it left."""
    folder = tmp_path_factory.mktemp("run")
    result = run_script("train", "--episodes", "10", "--logdir", "runs/a", "--clip-every", "5", *FAST, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "a normal run prints nothing to stderr"
    assert "No best model saved yet" in result.stdout and "Elapsed time:" in result.stdout
    return folder


def test_training_logs_the_lectures_scalars_and_more(run_dir):
    scalars, other_tags = read_events(run_dir / "runs" / "a")
    for tag in LOGGED_EVERY_EPISODE:
        assert tag in scalars, tag
    assert [step for step, _ in scalars["epsilon"]] == list(range(10))
    assert scalars["epsilon"][0][1] == pytest.approx(0.9)
    assert scalars["epsilon"][9][1] == pytest.approx(0.9 - 9 / 10**4)
    # tensorboardX writes the lecture's tag "ten episodes average rewards" with underscores
    assert [step for step, _ in scalars["ten_episodes_average_rewards"]] == [9]
    assert all(value == 3 for _, value in scalars["episode_length"])
    assert all(value > 0 for _, value in scalars["steps_per_second"])
    assert any("hyperparameters" in tag for tag in other_tags)


def test_training_logs_the_example_screen_and_greedy_episode_strips(run_dir):
    accumulator = EventAccumulator(str(run_dir / "runs" / "a"))
    accumulator.Reload()
    [screen] = accumulator.Images("example_extracted_screen")
    assert (screen.step, screen.width, screen.height) == (0, 40, 40)
    with Image.open(io.BytesIO(screen.encoded_image_string)) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == pixels[..., :1]).all() and pixels.std() > 10, "the network's grayscale frame of a scene"
    clips = accumulator.Images("greedy_episode_test_objects")
    assert [clip.step for clip in clips] == [4, 9]
    # With 3 steps an episode is 4 frames, each the 192x192 scene beside the network's view.
    assert all((clip.width, clip.height) == (4 * 2 * 192, 192) for clip in clips)


def test_plot_script_draws_runs_from_their_logs(run_dir):
    logs = run_dir / "runs" / "a"
    plot = [sys.executable, str(ROOT / "plot_curves.py")]
    result = subprocess.run(
        [*plot, str(logs), str(logs), "--names", "first", "second", "--out", "plots/curves.png"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Plotted 2 runs into plots/curves.png" and result.stderr == ""
    with Image.open(run_dir / "plots" / "curves.png") as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 400
        colours = image.convert("RGB").getcolors(maxcolors=100_000)
        assert colours is not None and len(colours) > 10, "not a blank page"

    before = (run_dir / "plots" / "curves.png").read_bytes()
    result = subprocess.run(
        [*plot, str(logs), "--out", "plots/curves.png"], cwd=run_dir, capture_output=True, text=True
    )
    assert_one_line_error(result, "plots/curves.png", "--overwrite")
    assert (run_dir / "plots" / "curves.png").read_bytes() == before
    for folder, message in ((run_dir / "nowhere", "no such folder"), (run_dir / "plots", "no TensorBoard event files")):
        result = subprocess.run([*plot, str(folder), "--out", "x.png"], cwd=run_dir, capture_output=True, text=True)
        assert_one_line_error(result, str(folder), message)
    result = subprocess.run([*plot, str(logs), "--names", "a", "b"], cwd=run_dir, capture_output=True, text=True)
    assert_one_line_error(result, "--names", "2 name(s) for 1 folder(s)")


def test_training_leaves_a_resumable_state(run_dir):
    state = load_checkpoint(run_dir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    assert state["episode"] == 10
    assert state["global_step"] == 30
    assert len(state["total_rewards"]) == 10
    assert state["logdir"] == str(Path("runs") / "a")
    assert not (run_dir / "policy_dqn.pt").exists(), "the best model is saved only after episode 100"


def test_eval_before_a_best_model_points_to_the_latest_policy(run_dir):
    result = run_script("eval", "--episodes", "1", cwd=run_dir)
    assert_one_line_error(result, "policy_dqn.pt", "--checkpoint policy_dqn.resume.pt")

    result = run_script("eval", "--episodes", "1", "--checkpoint", "policy_dqn.resume.pt", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Episode: 1, reward: ")


def test_resume_continues_the_episode_count_and_saves_the_best_model(run_dir):
    result = run_script("train", "--resume", "--episodes", "12", *FAST, cwd=run_dir)
    assert result.returncode == 0, result.stderr
    assert "Resuming from policy_dqn.resume.pt at episode 10 (replay memory restored: 30 transitions)" in result.stdout
    scalars, _ = read_events(run_dir / "runs" / "a")
    assert [step for step, _ in scalars["epsilon"]] == list(range(12))
    assert load_checkpoint(run_dir / "policy_dqn.resume.pt", CPU, ())["episode"] == 12

    # Past episode 100 the best model appears, with the lecture's keys; one action per episode keeps it quick.
    result = run_script(
        "train",
        "--resume",
        "--episodes",
        "102",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        cwd=run_dir,
    )
    assert result.returncode == 0, result.stderr
    best = load_checkpoint(run_dir / "policy_dqn.pt", CPU, CHECKPOINT_KEYS)
    assert best["episode"] == 101
    assert load_checkpoint(run_dir / "policy_dqn.resume.pt", CPU, ())["episode"] == 102

    result = run_script("eval", "--episodes", "2", "--device", "cpu", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Episode: 1, reward: ") and lines[1].startswith("Episode: 2, reward: ")
    assert re.fullmatch(
        r"Actions: stay \d+, x- \d+, x\+ \d+, y- \d+, y\+ \d+, turn- \d+, turn\+ \d+; "
        r"[0-2]/2 episodes repeat one action throughout",
        lines[2],
    ), lines[2]
    assert lines[3].startswith("Success rate: ") and "greedy policy on test objects" in lines[3]
    assert result.stderr == ""


def test_evaluation_counts_the_actions_taken(workdir):
    # One action per episode: every episode repeats its only action, and the counts add up to the episodes.
    result = run_script(
        "eval",
        "--policy",
        "random",
        "--episodes",
        "3",
        "--max-steps",
        "1",
        "--num-envs",
        "2",
        "--seed",
        "3",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.splitlines()[-2]
    counts = [int(n) for n in re.findall(r"(?:stay|x-|x\+|y-|y\+|turn-|turn\+) (\d+)", summary)]
    assert len(counts) == 7 and sum(counts) == 3, summary
    assert summary.endswith("; 3/3 episodes repeat one action throughout"), summary


def craft_resume_state(run_dir: Path, **changes) -> None:
    """Edit a real resumable state, to reach the lecture's late-episode conditions in one episode."""
    path = run_dir / "policy_dqn.resume.pt"
    state = torch.load(path, weights_only=True)
    state.update(changes)
    torch.save(state, path)


def test_a_better_mean_prints_the_lectures_line_then_the_solve_condition_stops(run_dir):
    state = load_checkpoint(run_dir / "policy_dqn.resume.pt", CPU, ())
    if state["episode"] < 102:
        pytest.skip("needs the state of the resume test")
    craft_resume_state(run_dir, best_mean_reward=-5.0)
    result = run_script("train", "--resume", "--episodes", "103", *FAST, cwd=run_dir)
    assert result.returncode == 0, result.stderr
    mean = 100 * sum(load_checkpoint(run_dir / "policy_dqn.resume.pt", CPU, ())["total_rewards"]) / 100
    assert f"Best mean reward updated -5.0 -> {mean:.1f}, model saved" in result.stdout
    assert load_checkpoint(run_dir / "policy_dqn.pt", CPU, CHECKPOINT_KEYS)["episode"] == 102

    craft_resume_state(run_dir, episode=200)
    result = run_script("train", "--resume", "--solve-score", "-1", "--episodes", "1000", *FAST, cwd=run_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    solved = [line for line in lines if line.startswith("Environment solved in 201 episodes!\tAverage Score: ")]
    assert solved, result.stdout
    assert any(line.startswith("Average Score: ") for line in lines)
    assert any(line.startswith("Elapsed time: ") for line in lines)
    assert load_checkpoint(run_dir / "policy_dqn.resume.pt", CPU, ())["episode"] == 201


def test_eval_of_the_random_baseline_on_training_objects(workdir):
    result = run_script("eval", "--policy", "random", "--objects", "train", "--episodes", "2", cwd=workdir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(",")[0] for line in lines[:2]] == ["Episode: 1", "Episode: 2"]
    assert lines[2].startswith("Actions: ") and "random policy on train objects" in lines[3]
    assert result.stderr == ""


def test_a_new_run_never_replaces_an_existing_checkpoint(workdir):
    for name in ("policy_dqn.pt", "policy_dqn.resume.pt"):
        precious = workdir / name
        precious.write_bytes(b"the user's weeks of training")
        result = run_script("train", "--episodes", "1", *FAST, cwd=workdir)
        assert_one_line_error(result, name, "--resume", "--checkpoint", "--overwrite")
        assert precious.read_bytes() == b"the user's weeks of training"
        precious.unlink()

    (workdir / "policy_dqn.resume.pt").write_bytes(b"old")
    result = run_script("train", "--episodes", "1", "--overwrite", "--logdir", "runs/b", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)["episode"] == 1


@pytest.mark.parametrize(
    "flags, synced_at_the_end",
    [
        ((), False),  # the lecture: a copy at episode 0, before any gradient step, then none for 1,000 episodes
        (("--target-update-steps", "1"), True),
        (("--tau", "1.0"), True),
    ],
)
def test_target_network_sync_options(workdir, flags, synced_at_the_end):
    result = run_script("train", "--episodes", "3", "--logdir", "runs/t", *FAST, *flags, cwd=workdir)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    policy, target = state["policy_net_state_dict"], state["target_net_state_dict"]
    assert all(torch.equal(policy[name], target[name]) for name in policy) == synced_at_the_end


def test_learning_starts_holds_back_gradient_steps(workdir):
    result = run_script(
        "train", "--episodes", "3", "--learning-starts", "100", "--logdir", "runs/l", *FAST, cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert "env steps/s, 0.00 gradient steps/s" in result.stdout
    scalars, _ = read_events(workdir / "runs" / "l")
    assert "epsilon" in scalars and "loss" not in scalars


def test_timestep_input_is_recorded_and_the_eval_script_rebuilds_it(workdir):
    result = run_script("train", "--episodes", "3", "--timestep-input", "--logdir", "runs/t", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    assert state["config"] == {
        "timestep_input": True,
        "image_size": 40,
        "rgb": False,
        "network": "lecture",
        "first_frame_input": False,
        "pose_input": False,
    }
    assert state["policy_net_state_dict"]["linear.weight"].shape == (512, 64 + 1)

    result = run_script(
        "eval",
        "--episodes",
        "2",
        "--num-envs",
        "2",
        "--checkpoint",
        "policy_dqn.resume.pt",
        "--device",
        "cpu",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("Success rate: ")

    result = run_script("train", "--resume", "--episodes", "4", *FAST, cwd=workdir)
    assert_one_line_error(result, "policy_dqn.resume.pt", "with --timestep-input")
    assert load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ())["episode"] == 3


def test_a_larger_colour_input_and_the_fine_network_are_recorded_and_the_eval_script_rebuilds_them(workdir):
    result = run_script(
        "train",
        "--episodes",
        "3",
        "--rgb",
        "--image-size",
        "64",
        "--network",
        "fine",
        "--num-envs",
        "2",
        "--clip-every",
        "3",
        "--logdir",
        "runs/c",
        *FAST,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    assert state["config"] == {
        "timestep_input": False,
        "image_size": 64,
        "rgb": True,
        "network": "fine",
        "first_frame_input": False,
        "pose_input": False,
    }
    assert state["policy_net_state_dict"]["conv1.weight"].shape == (32, 3 * 5, 4, 4)
    assert state["policy_net_state_dict"]["linear.weight"].shape == (512, 8 * 8 * 64)
    assert state["replay_memory"]["frames"].shape[2:] == (3, 64, 64)
    accumulator = EventAccumulator(str(workdir / "runs" / "c"))
    accumulator.Reload()
    [screen] = accumulator.Images("example_extracted_screen")
    with Image.open(io.BytesIO(screen.encoded_image_string)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.shape == (64, 64, 3) and np.abs(pixels - pixels[..., :1]).max() > 30, "a colour frame"
    assert len(accumulator.Images("greedy_episode_test_objects")) == 1

    result = run_script(
        "eval",
        "--episodes",
        "1",
        "--checkpoint",
        "policy_dqn.resume.pt",
        "--gif",
        "c.gif",
        "--device",
        "cpu",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert re.match(r"Success rate: [01]/1 = ", result.stdout.splitlines()[-1])
    assert (workdir / "c.gif").stat().st_size > 0

    result = run_script("train", "--resume", "--episodes", "4", *FAST, cwd=workdir)
    assert_one_line_error(result, "policy_dqn.resume.pt", "--image-size 64 --rgb --network fine")
    assert load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ())["episode"] == 3


@pytest.mark.parametrize("num_envs", ["1", "2"])
def test_the_first_frame_and_pose_inputs_train_resume_and_are_rebuilt_by_the_eval_script(workdir, num_envs):
    inputs = ("--first-frame-input", "--pose-input", "--num-envs", num_envs, "--max-steps", "6")
    result = run_script(
        "train", "--episodes", "3", *inputs, "--clip-every", "3", "--logdir", "runs/i", *FAST[2:], cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    result = run_script("train", "--resume", "--episodes", "5", *inputs, *FAST[2:], cwd=workdir)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    assert state["episode"] == 5
    assert state["config"] == {
        "timestep_input": False,
        "image_size": 40,
        "rgb": False,
        "network": "lecture",
        "first_frame_input": True,
        "pose_input": True,
    }
    assert state["policy_net_state_dict"]["conv1.weight"].shape == (32, 5 + 1, 8, 8)
    assert state["policy_net_state_dict"]["linear.weight"].shape == (512, 64 + 4)
    assert state["replay_memory"]["frames"].shape[1] == 10000 // int(num_envs) + 6  # spare slots: a whole episode
    assert "replay memory restored" in result.stdout

    result = run_script(
        "eval",
        "--episodes",
        "2",
        "--num-envs",
        num_envs,
        "--checkpoint",
        "policy_dqn.resume.pt",
        "--device",
        "cpu",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("Success rate: ")

    result = run_script("train", "--resume", "--episodes", "6", "--num-envs", num_envs, *FAST, cwd=workdir)
    assert_one_line_error(result, "policy_dqn.resume.pt", "--first-frame-input --pose-input")


def test_a_resume_that_changes_a_learning_hyperparameter_is_refused_unless_asked(workdir):
    result = run_script("train", "--episodes", "2", "--clip-every", "0", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ())["hyperparameters"]["lr"] == 1e-4

    changed = ("--resume", "--episodes", "3", "--lr", "0.5", "--gamma", "0.5", "--clip-every", "0", *FAST)
    result = run_script("train", *changed, cwd=workdir)
    assert_one_line_error(result, "--gamma 0.5 (saved: 0.99), --lr 0.5 (saved: 0.0001)", "--change-hyperparameters")
    assert load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ())["episode"] == 2, "nothing was trained"

    result = run_script("train", *changed, "--change-hyperparameters", cwd=workdir)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ("optimizer_policy_net_state_dict",))
    assert state["episode"] == 3 and state["hyperparameters"]["gamma"] == 0.5
    assert state["optimizer_policy_net_state_dict"]["param_groups"][0]["lr"] == 0.5, "the new rate took effect"

    same = ("--lr", "0.5", "--gamma", "0.5", "--batch-size", "4", "--device", "cpu", "--clip-every", "0")
    result = run_script("train", "--resume", "--episodes", "4", "--max-steps", "2", *same, cwd=workdir)
    assert result.returncode == 0, "--episodes and --max-steps may change: " + result.stderr


def test_resume_without_a_saved_state_says_so(workdir):
    result = run_script("train", "--resume", *FAST, cwd=workdir)
    assert_one_line_error(result, "policy_dqn.resume.pt", "no such checkpoint file")


@pytest.mark.parametrize(
    "script, flags, expected",
    [
        ("train", ["--episodes", "0"], "--episodes"),
        ("train", ["--episodes", "-3"], "--episodes"),
        ("train", ["--memory", "8"], "--memory"),
        ("train", ["--gamma", "1.5"], "--gamma"),
        ("train", ["--resume", "--overwrite"], "--overwrite"),
        ("train", ["--seed", "-1"], "--seed"),
        ("train", ["--num-envs", "0"], "--num-envs"),
        ("train", ["--num-envs", "40", "--memory", "36"], "--memory"),
        ("train", ["--updates-per-step", "0"], "--updates-per-step"),
        ("train", ["--learning-starts", "-1"], "--learning-starts"),
        ("train", ["--tau", "0.1", "--target-update-steps", "5"], "--target-update-steps"),
        ("train", ["--n-step", "0"], "--n-step"),
        ("train", ["--preset", "turbo"], "--preset"),
        ("train", ["--agent", "pose", "--double-dqn"], "--double-dqn: applies to --agent dqn only"),
        ("train", ["--agent", "pose", "--pose-input"], "--pose-input: applies to --agent dqn only"),
        ("train", ["--preset", "pose", "--n-step", "3"], "--n-step: applies to --agent dqn only"),
        ("train", ["--refit-every", "5"], "--refit-every: applies to --agent pose only"),
        ("train", ["--preset", "fast", "--updates-per-step", "0.5"], "--updates-per-step: applies to online learning"),
        ("train", ["--agent", "pose", "--refit-epochs", "3"], "--refit-epochs: applies with --refit-every only"),
        ("train", ["--agent", "policy"], "--agent"),
        ("eval", ["--episodes", "-1"], "--episodes"),
        ("eval", ["--objects", "kitchen"], "--objects"),
        ("eval", ["--num-envs", "-2"], "--num-envs"),
    ],
)
def test_bad_flags_give_one_line(workdir, script, flags, expected):
    assert_one_line_error(run_script(script, *flags, cwd=workdir), expected)


def test_a_log_folder_that_cannot_be_written(workdir):
    (workdir / "blocker").write_text("a file, not a folder")
    result = run_script("train", "--episodes", "1", "--logdir", "blocker/run", *FAST, cwd=workdir)
    assert_one_line_error(result, "--logdir", "blocker")
    assert not (workdir / "policy_dqn.resume.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("script", ["train", "eval"])
def test_cuda_without_a_gpu(workdir, script):
    assert_one_line_error(run_script(script, "--device", "cuda", cwd=workdir), "--device cuda")


@pytest.mark.parametrize(
    "num_envs, signum", [("1", signal.SIGINT), ("2", signal.SIGINT), ("1", signal.SIGTERM), ("2", signal.SIGTERM)]
)
def test_ctrl_c_or_sigterm_stops_cleanly_and_keeps_everything(workdir, num_envs, signum):
    # Ctrl-C in a terminal signals the whole process group, workers included, and so does a batch
    # scheduler's SIGTERM at a job's time limit. A shell that starts a job in the background ignores
    # SIGINT for it, so the child restores the default first.
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bullet_kuka_train.py"),
            "--episodes",
            "1000",
            "--num-envs",
            num_envs,
            "--logdir",
            "runs/c",
            *FAST,
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        logdir = workdir / "runs" / "c"
        deadline = time.monotonic() + 120  # until the first episode is in TensorBoard (flushed each second)
        while time.monotonic() < deadline and not (
            list(logdir.glob("events.out.tfevents.*")) and read_events(logdir)[0]["epsilon"]
        ):
            time.sleep(0.5)
        os.killpg(process.pid, signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()

    assert process.returncode == 128 + signum, stderr
    assert stderr == "", "no traceback from the main process or its workers"
    how = "Terminated" if signum == signal.SIGTERM else "Interrupted"
    assert re.search(rf"^{how} after \d+ episodes: state saved to .*; continue with --resume$", stdout, re.M), stdout
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, CHECKPOINT_KEYS)
    assert state["episode"] >= 1
    scalars, _ = read_events(workdir / "runs" / "c")
    assert [step for step, _ in scalars["epsilon"]] == list(range(state["episode"])), "TensorBoard was flushed"


def test_presets_set_their_defaults_and_command_line_flags_win():
    from grasping.flags import PRESET_ALIASES, PRESETS
    from grasping.flags import parse_training_args as parse_args

    lecture = parse_args([])
    for name in ("pose", "double-nstep-dqn"):
        preset = parse_args(["--preset", name])
        for dest, value in PRESETS[name].items():
            assert getattr(preset, dest) == value != getattr(lecture, dest), (name, dest)
    for alias, name in PRESET_ALIASES.items():  # the earlier names still work, and read as the new ones
        assert vars(parse_args(["--preset", alias])) == vars(parse_args(["--preset", name]))
    assert parse_args(["--preset", "pose"]).agent == "pose"
    assert parse_args(["--preset", "pose", "--lr", "0.01"]).lr == 0.01
    assert parse_args(["--eps-decay-last-frame", "7"]).eps_decay_episodes == 7, "the lecture's name still works"
    assert (lecture.agent, lecture.n_step, lecture.gamma, lecture.double_dqn, lecture.target_update_steps) == (
        "dqn",
        1,
        0.99,
        False,
        None,
    )
    assert parse_args(["--preset", "double-nstep-dqn", "--n-step", "5", "--gamma", "0.99"]).n_step == 5
    tau = parse_args(["--preset", "double-nstep-dqn", "--tau", "0.01"])
    assert (tau.tau, tau.target_update_steps) == (0.01, None), "an explicit --tau replaces the preset's step sync"
    ablation = parse_args(["--preset", "double-nstep-dqn", "--no-double-dqn", "--no-augment"])
    assert (ablation.double_dqn, ablation.augment, ablation.n_step) == (False, False, 3), "--no-X turns one option off"
