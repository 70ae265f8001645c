"""The real pybullet environment, the lecture's preprocessing and the frame stack."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from conftest import ROOT
from PIL import Image

from common import SCREEN_SIZE, STACK_SIZE, FrameStack, Observation, preprocess_frame, seed_everything, to_float
from grasping.environment import make_env, restore_scene_generators, scene_generators

LECTURE_PIPELINE = T.Compose(
    [
        T.ToPILImage(),
        T.Grayscale(num_output_channels=1),
        T.Resize(40, interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
    ]
)


def lecture_preprocess(obs: np.ndarray) -> torch.Tensor:
    """The lecture's get_screen on an observation: CHW float in [0, 1], then its torchvision pipeline."""
    screen = np.ascontiguousarray(obs.transpose((2, 0, 1)), dtype=np.float32) / 255
    return LECTURE_PIPELINE(torch.from_numpy(screen)).unsqueeze(0)


@pytest.fixture(scope="module")
def real_frames() -> list[np.ndarray]:
    """Observations from two real episodes on training objects under random actions."""
    seed_everything(0)
    env = make_env(is_test=False)
    frames = [env.reset()]
    rng = np.random.default_rng(0)
    episodes = 0
    while episodes < 2:
        obs, _, done, _ = env.step(int(rng.integers(7)))
        frames.append(obs)
        if done:
            episodes += 1
            if episodes < 2:
                frames.append(env.reset())
    env.close()
    return frames


@pytest.mark.slow
def test_environment_is_the_lectures(real_frames):
    assert len(real_frames) >= 4
    for obs in real_frames:
        assert obs.shape == (48, 48, 3) and obs.dtype == np.uint8
    env = make_env(is_test=True)
    try:
        assert env.action_space.n == 7
        assert env._isTest and env._isDiscrete and not env._removeHeightHack and env._maxSteps == 20
    finally:
        env.close()


def test_preprocess_matches_the_lectures_torchvision_pipeline(real_frames):
    for obs in real_frames:
        frame = preprocess_frame(obs)
        assert frame.shape == (SCREEN_SIZE, SCREEN_SIZE) and frame.dtype == np.uint8
        ours = to_float(torch.from_numpy(frame)).view(1, 1, SCREEN_SIZE, SCREEN_SIZE)
        theirs = lecture_preprocess(obs)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32
        assert (ours - theirs).abs().max() <= 1 / 255 + 1e-6
    assert preprocess_frame(real_frames[0]).std() > 2, "a real frame is not blank"


def first_observation(seed: int, camera_size: int, height: bool = False) -> np.ndarray:
    seed_everything(seed)
    env = make_env(is_test=False, camera_size=camera_size, height=height)
    try:
        return env.reset()
    finally:
        env.close()


@pytest.mark.slow
def test_a_larger_rgb_observation_is_the_same_camera_in_more_detail(real_frames):
    lecture, colour96 = Observation(), Observation(96, rgb=True)
    assert (lecture.camera_size, colour96.camera_size, Observation(40, rgb=True).camera_size) == (48, 96, 48)
    assert np.array_equal(lecture.preprocess(real_frames[0]), preprocess_frame(real_frames[0]))
    assert Observation(40, rgb=True).preprocess(real_frames[0]).shape == (3, 40, 40)

    obs = first_observation(0, camera_size=96)
    assert obs.shape == (96, 96, 3)
    frame = colour96.preprocess(obs)
    assert frame.shape == colour96.frame_shape == (3, 96, 96) and frame.dtype == np.uint8
    assert np.array_equal(frame, obs.transpose(2, 0, 1)), "the camera's pixels, channels first, not resized"
    # Averaged down to 48x48 it is the lecture's camera image of the same scene, give or take the
    # renderer's sampling (mean difference 7 of 255 here), unlike another scene's (13 and more).
    shrunk = np.asarray(Image.fromarray(obs).resize((48, 48), Image.Resampling.BOX), dtype=float)
    same_scene = np.abs(shrunk - first_observation(0, camera_size=48)).mean()
    other_scene = np.abs(shrunk - first_observation(1, camera_size=48)).mean()
    assert same_scene < 0.6 * other_scene, (same_scene, other_scene)


def test_the_height_channel_comes_with_the_same_image_and_is_kept_as_a_last_channel():
    colour, with_height = first_observation(0, 96), first_observation(0, 96, height=True)
    assert with_height.shape == (96, 96, 4) and with_height.dtype == np.uint8
    assert np.array_equal(with_height[:, :, :3], colour), "the same render, with the height beside it"
    height = with_height[:, :, 3]
    assert np.mean(np.abs(height.astype(int) - 6) <= 1) > 0.1, "the tray's floor, 6 mm above FLOOR_Z"
    assert np.mean((height > 20) & (height < 150)) > 0.01, "objects standing on it"
    observation = Observation(96, rgb=True, height=True)
    frame = observation.preprocess(with_height)
    assert frame.shape == observation.frame_shape == (4, 96, 96)
    assert np.array_equal(frame, with_height.transpose(2, 0, 1))
    assert Observation(48, rgb=False, height=True).preprocess(with_height).shape == (2, 48, 48)
    with pytest.raises(ValueError, match="height channel"):
        observation.preprocess(colour)


def test_preprocess_rejects_a_non_rgb_array():
    with pytest.raises(ValueError, match="RGB"):
        preprocess_frame(np.zeros((48, 48), dtype=np.uint8))


def test_frame_stack_starts_from_copies_and_shifts():
    first, second = np.zeros((40, 40), np.uint8), np.ones((40, 40), np.uint8)
    stack = FrameStack()
    state = stack.reset(first)
    assert state.shape == (STACK_SIZE, 40, 40) and state.dtype == np.uint8
    assert not state.any()
    state = stack.push(second)
    assert not state[:-1].any() and (state[-1] == 1).all()
    for _ in range(STACK_SIZE):
        state = stack.push(second)
    assert (state == 1).all()


def test_seeding_decides_the_scene():
    env = make_env(is_test=False)
    try:
        seed_everything(7)
        first = env.reset()
        seed_everything(7)
        again = env.reset()
        seed_everything(8)
        other = env.reset()
    finally:
        env.close()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_restoring_the_generators_draws_a_scene_again_and_then_the_scenes_that_followed_it():
    env = make_env(is_test=False)
    try:
        seed_everything(7)
        before = scene_generators(env)
        first, second = env.reset(), env.reset()
        seed_everything(7)
        env.reset()
        restore_scene_generators(env, before)  # the first scene played again
        again = env.reset()
        second_again = env.reset()  # and then the scene that would have come next anyway
    finally:
        env.close()
    assert not np.array_equal(first, second)
    assert np.array_equal(first, again)
    assert np.array_equal(second, second_again)


def test_environment_opens_and_closes_without_noise():
    code = (
        "from grasping.environment import make_env\n"
        "env = make_env(is_test=True)\n"
        "env.reset(); env.step(0); env.close()\n"
        "env = make_env(is_test=False)\n"
        "env.reset(); env.close(); del env\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
