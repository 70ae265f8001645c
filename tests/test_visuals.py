"""What users look at: the episode GIF, the PyBullet GUI flag, and the curves plotted from TensorBoard logs."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
from conftest import assert_one_line_error, run_script
from PIL import Image, ImageSequence

from common import preprocess_frame, seed_everything
from grasping.environment import make_env, render_scene
from grasping.recording import EpisodeRecorder

pytestmark = pytest.mark.slow  # every test here runs the scripts or workers end to end


def replay_random_episode(seed: int) -> tuple[EpisodeRecorder, float]:
    """The first episode `bullet_kuka_eval.py --policy random --seed SEED` plays, replayed in this process:
    its recorded frames and its reward."""
    seed_everything(seed)
    env = make_env(is_test=True)
    rng = random.Random(seed)  # the eval script's generator for the random policy of environment 0
    recorder = EpisodeRecorder()
    try:
        first = preprocess_frame(env.reset())
        recorder.start(render_scene(env), first)
        done, step = False, 0
        while not done:
            action = rng.randrange(env.action_space.n)
            obs, reward, done, _ = env.step(action)
            step += 1
            recorder.step(render_scene(env), preprocess_frame(obs), step, action, reward, done)
    finally:
        env.close()
    return recorder, reward


def test_gif_has_one_frame_per_step_plus_the_first_showing_both_views(workdir):
    result = run_script(
        "eval", "--policy", "random", "--episodes", "1", "--seed", "3", "--gif", "out/episode.gif", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with Image.open(workdir / "out" / "episode.gif") as gif:
        assert gif.format == "GIF" and getattr(gif, "is_animated", False)
        frames = [np.asarray(frame.convert("RGB"), dtype=np.int16) for frame in ImageSequence.Iterator(gif)]

    expected, reward = replay_random_episode(3)
    steps = len(expected.frames) - 1
    assert 1 <= steps <= 20
    assert len(frames) == steps + 1
    assert result.stdout.splitlines()[0] == f"Episode: 1, reward: {reward}", "the same episode"
    assert f"Recorded {steps + 1} frames of 1 episode in out/episode.gif" in result.stdout

    for frame in frames:
        assert frame.shape == (256, 512, 3)
        spread = frame.max(axis=2) - frame.min(axis=2)
        assert (spread[:, :256] > 30).mean() > 0.1, "the left half is the scene, in colour"
        assert (spread[:, 256:] <= 8).mean() > 0.98, "the right half is the network's grayscale frame and its captions"
    # Frame by frame, the GIF holds the same scene and the same network frames as the replayed episode
    # (up to the GIF's 256-colour palette), while a frame of another step differs from it.
    for frame, wanted in zip(frames, expected.frames):
        assert np.abs(frame - np.asarray(wanted, dtype=np.int16)).mean() < 3
    assert np.abs(frames[0] - np.asarray(expected.frames[-1], dtype=np.int16)).mean() > 3


def test_gif_refuses_a_wrong_name_an_existing_file_and_several_workers(workdir):
    result = run_script("eval", "--policy", "random", "--gif", "episode.png", cwd=workdir)
    assert_one_line_error(result, "--gif", "must end in .gif")
    (workdir / "mine.gif").write_bytes(b"GIF89a user's file")
    result = run_script("eval", "--policy", "random", "--episodes", "1", "--gif", "mine.gif", cwd=workdir)
    assert_one_line_error(result, "mine.gif", "--overwrite")
    assert (workdir / "mine.gif").read_bytes() == b"GIF89a user's file"
    result = run_script("eval", "--policy", "random", "--num-envs", "2", "--gif", "x.gif", cwd=workdir)
    assert_one_line_error(result, "--gif", "--num-envs 1")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the GUI needs an X display on Linux only")
@pytest.mark.parametrize("script", ["eval", "train"])
def test_render_without_a_display_says_so(workdir, monkeypatch, script):
    monkeypatch.delenv("DISPLAY", raising=False)
    result = run_script(script, "--render", "--episodes", "1", cwd=workdir)
    assert_one_line_error(result, "--render", "DISPLAY is not set")
    monkeypatch.setenv("DISPLAY", ":77")  # no X server answers there
    result = run_script(script, "--render", "--episodes", "1", cwd=workdir)
    assert_one_line_error(result, "--render", "cannot open the display DISPLAY=:77")
    assert not (workdir / "policy_dqn.resume.pt").exists(), "nothing ran"


def test_render_is_refused_with_several_workers(workdir):
    for script in ("eval", "train"):
        result = run_script(script, "--render", "--num-envs", "2", cwd=workdir)
        assert_one_line_error(result, "--render", "--num-envs 1")
