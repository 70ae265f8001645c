"""Playing a policy on test or training objects, and its success rate: the one way to evaluate, for the eval
script and the benchmarks alike. Nothing here prints; a caller that wants each episode's reward passes
`on_episode`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import DQN, FrameStack, Observation, seed_everything
from grasping.checkpoints import load_checkpoint, load_state, observation_of
from grasping.dqn import DQNPolicy
from grasping.environment import make_env, render_scene
from grasping.pool import EnvPool, in_process, open_pool
from grasping.pose_agent import PoseLattice, PosePolicy, agent_config, saved_grasp_net
from grasping.recording import EpisodeRecorder
from grasping.rollouts import Policy, Rollouts
from grasping.stats import success_rate, wilson_interval

EpisodeReport = Callable[[int, float], None]
"""Called with each episode's number (from 1) and reward, in episode order."""


@dataclass
class Evaluation:
    """Each episode's final reward and the actions taken in it, in episode order."""

    rewards: list[float]
    sequences: list[list[int]]
    lost: int = 0
    """Episodes lost with their worker (a Ray actor) and played again from the start."""

    @property
    def successes(self) -> int:
        return int(sum(self.rewards))

    @property
    def episodes(self) -> int:
        return len(self.rewards)

    @property
    def interval(self) -> tuple[float, float]:
        """The success rate's 95% Wilson interval."""
        return wilson_interval(self.successes, self.episodes)

    def success_rate(self) -> str:
        """`successes/episodes = rate% (95% CI low-high%)`."""
        return success_rate(self.successes, self.episodes)


def random_policy(n_actions: int, seed: int, num_envs: int) -> Policy:
    """The uniform random policy, a generator per environment: its actions do not depend on the order the workers
    answer in."""
    rngs = [random.Random(seed + index) for index in range(num_envs)]

    def policy(states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
        return [rngs[index].randrange(n_actions) for index in indices]

    return policy


def greedy_policy(checkpoint: dict[str, Any], path: Path, n_actions: int, device: torch.device) -> Policy:
    """The greedy policy of a checkpoint of either agent, rebuilt from the file alone."""
    agent, config = agent_config(checkpoint, path)
    if agent == "pose":
        return PosePolicy(saved_grasp_net(checkpoint, path, device), PoseLattice())
    policy_net = DQN.from_config(config, n_actions).to(device)
    load_state(policy_net, checkpoint, "policy_net_state_dict", path)
    return DQNPolicy(policy_net, n_actions)


def play(
    env: Any,
    observation: Observation,
    policy: Policy,
    episodes: int,
    recorder: EpisodeRecorder | None = None,
    on_episode: EpisodeReport | None = None,
) -> Evaluation:
    """One environment in this process, episode after episode, as in the lecture.

    Camera images become `observation`'s frames. A recorder gets the scene and the network's frame
    after the reset and after every step.
    """
    rewards, sequences = [], []
    for i_episode in range(episodes):
        frames = FrameStack()
        frame = observation.preprocess(env.reset())
        state = frames.reset(frame)
        if recorder is not None:
            recorder.start(render_scene(env, recorder.size), frame)
        done, actions = False, list[int]()
        while not done:
            action = policy(state[None], [0], [len(actions)])[0]
            actions.append(action)
            obs, reward, done, _ = env.step(action)
            frame = observation.preprocess(obs)
            state = frames.push(frame)
            if recorder is not None:
                recorder.step(render_scene(env, recorder.size), frame, len(actions), action, reward, done)
        rewards.append(reward)
        sequences.append(actions)
        if on_episode is not None:
            on_episode(i_episode + 1, reward)
    return Evaluation(rewards, sequences)


def play_in_parallel(
    pool: EnvPool, observation: Observation, policy: Policy, episodes: int, on_episode: EpisodeReport | None = None
) -> Evaluation:
    """The episodes shared out over the workers, worker i playing episodes i, i + N, ...; a seed fixes the scenes.

    Waiting workers get one batched forward pass. `on_episode` hears of each episode once it and all
    the episodes before it are done, so what it is told is the same from run to run.
    """
    rollouts = Rollouts(pool, observation, episodes)
    rewards: dict[int, float] = {}
    sequences: dict[int, list[int]] = {}
    reported = lost = 0
    while not rollouts.finished:
        for step in rollouts.steps():
            lost += step.lost
            if step.done:
                rewards[step.episode], sequences[step.episode] = step.reward, step.actions
        while reported in rewards:
            if on_episode is not None:
                on_episode(reported + 1, rewards[reported])
            reported += 1
        rollouts.act(policy)
    return Evaluation([rewards[i] for i in range(episodes)], [sequences[i] for i in range(episodes)], lost)


def evaluate(
    checkpoint: Path | None,
    episodes: int,
    is_test: bool = True,
    seed: int = 1,
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    max_steps: int = 20,
    render: bool = False,
    recorder: EpisodeRecorder | None = None,
    on_episode: EpisodeReport | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    on_start: Callable[[str], None] | None = None,
) -> Evaluation:
    """Play `episodes` episodes with a checkpoint's greedy policy, or the uniform random policy when `checkpoint`
    is None; `seed` and `num_envs` fix the scenes, so that every policy can be shown the same ones.

    With one local environment the episodes run in this process (`render` and `recorder` need that);
    otherwise in the workers `backend` names (`on_start` hears where Ray placed them). A checkpoint that
    cannot be loaded raises a CheckpointError.
    """
    device = torch.device(device)
    seed_everything(seed)
    observation = Observation()
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, device, ("policy_net_state_dict",))
        observation = observation_of(agent_config(saved, checkpoint)[1])
    env: Any  # pybullet's gym environment (untyped), or an EnvPool
    if in_process(backend, num_envs):
        env = make_env(is_test, max_steps, render, observation.camera_size, observation.height, observation.overhead)
        n_actions = env.action_space.n
    else:
        env = open_pool(
            backend,
            num_envs,
            seed,
            is_test,
            max_steps,
            observation.camera_size,
            observation.height,
            observation.overhead,
            ray_address,
        )
        n_actions = env.n_actions
        if backend == "ray" and on_start is not None:
            on_start(env.describe())
    try:
        if checkpoint is None:
            policy = random_policy(n_actions, seed, num_envs)
        else:
            policy = greedy_policy(saved, checkpoint, n_actions, device)
        if in_process(backend, num_envs):
            return play(env, observation, policy, episodes, recorder, on_episode)
        return play_in_parallel(env, observation, policy, episodes, on_episode)
    finally:
        env.close()
