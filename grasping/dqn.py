"""The lecture's learner (`--agent dqn`): `DQNAgent`, and `DQNPolicy`, which acts with its Q-network in a set of
environments. The pieces are the lecture's, in common.py; the kinematics give the opt-in pose input."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import DQN, NETWORKS, Observation, ReplayMemory, greedy_actions, optimize_model, select_actions, soft_update
from grasping.checkpoints import load_state, networks_state
from grasping.kinematics import EpisodeTracker, pose_features, pose_features_after


class DQNPolicy:
    """Acting with a DQN in a set of environments, as the loops call a policy: a batch of states, the
    environments they come from and their timesteps (actions taken in the episode so far). A network with
    `first_frame_input` or `pose_input` gets them from the episode so far, which an `EpisodeTracker` keeps."""

    def __init__(self, policy_net: DQN, n_actions: int, rng: random.Random | None = None) -> None:
        self.policy_net, self.n_actions, self.rng = policy_net, n_actions, rng or random.Random(0)
        self.episodes = EpisodeTracker()

    def __call__(self, states: np.ndarray, indices: list[int], timesteps: list[int], epsilon: float = 0.0) -> list[int]:
        for position, (index, t) in enumerate(zip(indices, timesteps)):
            if t == 0:
                self.episodes.start(index, states[position, -1])
        if self.policy_net.first_frame_input:
            first = np.stack([self.episodes.first_frames[i] for i in indices])
            states = np.concatenate((first[:, None], states), axis=1)
        poses = (
            pose_features(np.array([self.episodes.poses[i] for i in indices])) if self.policy_net.pose_input else None
        )
        if epsilon > 0:
            actions = select_actions(self.policy_net, states, epsilon, self.n_actions, self.rng, timesteps, poses)
        else:
            actions = greedy_actions(self.policy_net, states, timesteps, poses)
        for index, action in zip(indices, actions):
            self.episodes.moved(index, action)
        return actions


class DQNAgent:
    """The lecture's learner: policy and target networks, Adam and the replay memory of transitions.

    The training loop calls `act`, `store`, `learn` (as often as its cadence says) and `end_episode`; the pose
    agent (grasping.pose_agent.PoseAgent) has the same methods. When the target network follows the policy
    network is decided in one place, `sync_target`.
    """

    def __init__(
        self, args: argparse.Namespace, observation: Observation, n_actions: int, device: torch.device, seed: int
    ) -> None:
        self.args = args
        self.n_actions = n_actions
        self.rng = random.Random(seed)
        network = NETWORKS[args.network]
        inputs = (args.timestep_input, args.first_frame_input, args.pose_input)
        self.policy_net = network.for_observation(observation, n_actions, *inputs).to(device)
        self.target_net = network.for_observation(observation, n_actions, *inputs).to(device)
        self.target_net.load_state_dict(self.policy_net.state_dict())
        self.target_net.eval()
        self.optimizer = torch.optim.Adam(self.policy_net.parameters(), lr=args.lr)
        self.memory = ReplayMemory(
            args.memory,
            device,
            num_streams=args.num_envs,
            seed=seed,
            frame_shape=observation.frame_shape,
            first_frame=args.first_frame_input,
            pose_features=pose_features_after if args.pose_input else None,
            max_episode_steps=args.max_steps,
        )
        self.policy = DQNPolicy(self.policy_net, n_actions, self.rng)
        self.gradient_steps = 0

    @property
    def config(self) -> dict[str, Any]:
        return self.policy_net.config

    def act(self, states: np.ndarray, indices: list[int], timesteps: list[int], epsilon: float) -> list[int]:
        """Epsilon-greedy actions for these environments' states, in one forward pass."""
        return self.policy(states, indices, timesteps, epsilon)

    def greedy_policy(self) -> DQNPolicy:
        """A greedy policy of its own (for clips), leaving the training environments' episodes alone."""
        return DQNPolicy(self.policy_net, self.n_actions)

    def store(
        self, state: np.ndarray, action: int, next_state: np.ndarray | None, reward: float, stream: int = 0
    ) -> None:
        self.memory.push(state, action, next_state, reward, stream)

    def before_reset(self, stream: int, call: Callable[..., Any]) -> None:
        """The environment of `stream` is about to draw its next scene: the lecture's DQN leaves it to draw afresh."""

    def drop_episode(self, stream: int) -> None:
        """The environment of `stream` was lost mid-episode: its transitions so far leave the memory."""
        self.memory.drop_unfinished(stream)

    def learn(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One call of the lecture's optimize_model; nothing until the memory holds a batch and --learning-starts
        transitions. Returns (loss, mean Q) of the step taken."""
        args = self.args
        if len(self.memory) < args.learning_starts:
            return None
        result = optimize_model(
            self.policy_net,
            self.target_net,
            self.optimizer,
            self.memory,
            args.batch_size,
            args.gamma,
            n_step=args.n_step,
            double_dqn=args.double_dqn,
            augment=args.augment,
        )
        if result is not None:
            self.gradient_steps += 1
            self.sync_target()
        return result

    def end_episode(self, i_episode: int) -> None:
        """The end of episode `i_episode` (from 0): the lecture's target sync by episodes; nothing is learned."""
        self.sync_target(i_episode)

    def sync_target(self, i_episode: int | None = None) -> None:
        """The target network follows the policy network, after a gradient step (`i_episode` None) or at the end of
        episode `i_episode`: with --tau by Polyak averaging after every step; with --target-update-steps a copy
        every that many steps; otherwise the lecture's copy every --target-update episodes."""
        args = self.args
        if args.tau is not None:
            if i_episode is None:
                soft_update(self.target_net, self.policy_net, args.tau)
        elif args.target_update_steps is not None:
            if i_episode is None and self.gradient_steps % args.target_update_steps == 0:
                self.target_net.load_state_dict(self.policy_net.state_dict())
        elif i_episode is not None and i_episode % args.target_update == 0:
            self.target_net.load_state_dict(self.policy_net.state_dict())

    def catch_up(self) -> None:
        """What a stopped run still owes on resuming: nothing, for a DQN (the pose agent may owe a refit)."""
        return None

    def resume_state(self) -> dict[str, Any]:
        """What a resumable state keeps besides the networks and the memory: nothing, for a DQN."""
        return {}

    def networks(self) -> dict[str, Any]:
        """The checkpoint content, under the lecture's keys."""
        return networks_state(self.policy_net, self.target_net, self.optimizer)

    def load(self, checkpoint: dict[str, Any], path: Path) -> None:
        load_state(self.policy_net, checkpoint, "policy_net_state_dict", path)
        load_state(self.target_net, checkpoint, "target_net_state_dict", path)
        load_state(self.optimizer, checkpoint, "optimizer_policy_net_state_dict", path)
