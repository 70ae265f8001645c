"""The Gymnasium environment on the real pybullet simulation: Gymnasium's own checker, seeding, the end of an
episode, vectorised stepping, and Stable-Baselines3 on top of it. Needs the `gymnasium` extra (and `sb3` for
the SB3 tests); skipped without it."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402 (after the extra's check)

from grasping.gymnasium_env import ENV_ID, KukaDiverseObjectGrasp  # noqa: E402


def play_out(env: KukaDiverseObjectGrasp, seed: int, action: int = 0) -> list[tuple[float, bool, bool, dict]]:
    """One episode from `reset(seed=seed)`, `action` at every step: (reward, terminated, truncated, info) per step."""
    env.reset(seed=seed)
    steps: list[tuple[float, bool, bool, dict]] = []
    while not steps or not (steps[-1][1] or steps[-1][2]):
        _, reward, terminated, truncated, info = env.step(action)
        steps.append((reward, terminated, truncated, info))
    return steps


def test_gymnasiums_checker_passes_without_a_warning() -> None:
    env = gymnasium.make(ENV_ID, is_test=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        assert [str(warning.message) for warning in caught] == []
        assert env.observation_space == gymnasium.spaces.Box(0, 255, (48, 48, 3), np.uint8)
        assert env.action_space == gymnasium.spaces.Discrete(7)
    finally:
        env.close()


def test_the_options_reach_pybullets_class() -> None:
    env = KukaDiverseObjectGrasp(is_test=True, max_steps=5, image_size=64, height_hack=False, render_mode="rgb_array")
    try:
        observation, info = env.reset(seed=0)
        assert observation.shape == (64, 64, 3) and observation.dtype == np.uint8 and info == {}
        assert env.action_space == gymnasium.spaces.Discrete(9)
        assert env._env._isTest and env._env._maxSteps == 5 and env._env._removeHeightHack
        image = env.render()
        assert image is not None and image.shape == (256, 256, 3)
    finally:
        env.close()


def test_one_seed_gives_one_scene_whatever_ran_before_and_another_seed_another() -> None:
    first = KukaDiverseObjectGrasp(is_test=True)
    second = KukaDiverseObjectGrasp(is_test=True)  # a second physics client in the same process
    try:
        scene, _ = first.reset(seed=5)
        for _ in range(3):
            first.step(1)
        first.reset(seed=7)
        random.seed(3)
        np.random.seed(3)
        again, _ = first.reset(seed=5)
        assert random.random() == random.Random(3).random(), "the global random generator moved"
        assert np.random.random() == np.random.RandomState(3).random_sample(), "NumPy's global generator moved"
        elsewhere, _ = second.reset(seed=5)
        other, _ = second.reset(seed=6)
        np.testing.assert_array_equal(scene, again)
        np.testing.assert_array_equal(scene, elsewhere)
        assert not np.array_equal(scene, other)
    finally:
        first.close()
        second.close()


def test_a_grasp_terminates_and_a_timeout_truncates() -> None:
    env = KukaDiverseObjectGrasp(is_test=True)  # the height hack takes the gripper to the floor in 7 or 8 steps
    try:
        # Where the objects list in the development machine's order, staying put lifts nothing in scene 1 and an
        # object in scene 5; on any machine, the outcome reported must be the simulation's.
        for seed in (1, 5):
            grasp = play_out(env, seed)
            assert [step[1:3] for step in grasp[:-1]] == [(False, False)] * (len(grasp) - 1)
            reward, terminated, truncated, info = grasp[-1]
            assert terminated and not truncated and info["grasp_attempted"]
            heights = [env._client.getBasePositionAndOrientation(uid)[0][2] for uid in env._env._objectUids]
            lifted = max(heights) > 0.2  # the environment's success: an object above 0.2 m
            assert info["grasp_success"] == lifted and reward == float(lifted)
    finally:
        env.close()
    short = KukaDiverseObjectGrasp(is_test=True, max_steps=3)
    try:
        timeout = play_out(short, seed=1)
        assert len(timeout) == 3
        reward, terminated, truncated, info = timeout[-1]
        assert truncated and not terminated and reward == 0.0
        assert info == {"grasp_attempted": False, "grasp_success": False}
    finally:
        short.close()


def test_an_asynchronous_vector_env_steps() -> None:
    envs = gymnasium.vector.AsyncVectorEnv([lambda: gymnasium.make(ENV_ID, is_test=True)] * 2)
    try:
        observations, _ = envs.reset(seed=[1, 2])
        assert observations.shape == (2, 48, 48, 3)
        ended = np.zeros(2, dtype=bool)
        for _ in range(8):
            observations, rewards, terminated, truncated, infos = envs.step(np.array([0, 3]))
            ended |= terminated
        assert observations.shape == (2, 48, 48, 3) and rewards.shape == (2,)
        assert ended.all(), "both episodes should have ended in 8 steps with the height hack"
    finally:
        envs.close()


@pytest.mark.slow
def test_stable_baselines3_dqn_learns_a_few_hundred_steps(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    import torch
    from stable_baselines3 import DQN

    env = KukaDiverseObjectGrasp()
    try:
        model = DQN("CnnPolicy", env, buffer_size=1_000, learning_starts=100, seed=0, device="cpu")
        before = [parameter.detach().clone() for parameter in model.q_net.parameters()]
        model.learn(200)
        assert model.num_timesteps == 200 and model.replay_buffer is not None and model.replay_buffer.pos == 200
        assert model._n_updates > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, model.q_net.parameters())), "no weight changed"
    finally:
        env.close()


@pytest.mark.slow
def test_the_sb3_benchmarks_state_comes_back_whole_without_pickle(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    import torch
    from stable_baselines3 import DQN

    from benchmarks.sb3_baseline import load_state, save_state

    env = KukaDiverseObjectGrasp()
    try:
        model = DQN("CnnPolicy", env, buffer_size=500, learning_starts=20, seed=0, device="cpu")
        model.learn(40)
        save_state(model, tmp_path, {"episodes": 5, "train_seconds": 12.5})
        fresh = DQN("CnnPolicy", env, buffer_size=500, learning_starts=20, seed=1, device="cpu")
        progress = load_state(fresh, tmp_path)
    finally:
        env.close()
    assert progress["episodes"] == 5 and progress["train_seconds"] == 12.5
    assert (fresh.num_timesteps, fresh._n_updates) == (model.num_timesteps, model._n_updates) == (40, 5)
    for name, tensor in model.policy.state_dict().items():
        assert torch.equal(tensor, fresh.policy.state_dict()[name]), name
    assert model.replay_buffer is not None and fresh.replay_buffer is not None
    assert fresh.replay_buffer.pos == model.replay_buffer.pos == 40
    np.testing.assert_array_equal(fresh.replay_buffer.observations, model.replay_buffer.observations)
    np.testing.assert_array_equal(fresh.replay_buffer.rewards, model.replay_buffer.rewards)
    assert fresh.policy.optimizer.state_dict()["state"].keys() == model.policy.optimizer.state_dict()["state"].keys()
