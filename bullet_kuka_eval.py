"""Evaluate a trained grasping policy greedily, or the uniform random policy as the baseline.

    python bullet_kuka_eval.py                          # policy_dqn.pt, 10 episodes on test objects
    python bullet_kuka_eval.py --episodes 100 --objects train
    python bullet_kuka_eval.py --policy random --episodes 100 --num-envs 4

Prints each episode's reward as the lecture does, then the success rate with its 95% interval.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from common import (
    DQN,
    SCREEN_SIZE,
    EnvPool,
    FrameStack,
    OneLineArgumentParser,
    UsageError,
    greedy_actions,
    load_checkpoint,
    load_state,
    make_env,
    positive_int,
    preprocess_frame,
    report_errors,
    resolve_device,
    resume_path,
    seed_everything,
    seed_int,
    wilson_interval,
)

Policy = Callable[[np.ndarray, list[int]], list[int]]
"""Actions for a batch of uint8 states, and the indices of the environments they come from."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Evaluate a DQN grasping policy on KukaDiverseObjectEnv (pybullet).")
    parser.add_argument("--episodes", type=positive_int, default=10, help="episodes to evaluate (lecture: 10)")
    parser.add_argument("--max-steps", type=positive_int, default=20,
                        help="actions per episode before the environment ends it (maxSteps)")
    parser.add_argument("--objects", choices=("test", "train"), default="test",
                        help="held-out test objects (lecture) or the training objects")
    parser.add_argument("--policy", choices=("greedy", "random"), default="greedy",
                        help="the checkpoint's greedy policy, or uniform random actions as the baseline")
    parser.add_argument("--num-envs", type=positive_int, default=1,
                        help="environments, each in its own worker process, sharing the episodes; "
                             "1 runs them in this process")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs; auto picks CUDA when a GPU is usable")
    parser.add_argument("--seed", type=seed_int, default=1,
                        help="seed of the scenes; the same seed and --num-envs show every policy the same objects")
    parser.add_argument("--checkpoint", type=Path, default=Path("policy_dqn.pt"),
                        help="checkpoint holding 'policy_net_state_dict' (ignored with --policy random)")
    return parser.parse_args(argv)


def run_episodes(env: Any, policy: Policy, episodes: int) -> list[float]:
    """One environment in this process, episode after episode, as in the lecture; prints each reward."""
    rewards = []
    for i_episode in range(episodes):
        frames = FrameStack()
        state = frames.reset(preprocess_frame(env.reset()))
        done = False
        while not done:
            obs, reward, done, _ = env.step(policy(state[None], [0])[0])
            state = frames.push(preprocess_frame(obs))
        rewards.append(reward)
        print("Episode: {0:d}, reward: {1}".format(i_episode + 1, reward))
    return rewards


def run_episodes_in_parallel(pool: EnvPool, policy: Policy, episodes: int) -> list[float]:
    """The episodes shared out over the workers, worker i playing episodes i, i + N, ...; a seed fixes the scenes.

    Waiting workers get one batched forward pass. Each episode is printed once it and all the
    episodes before it are done, so the output is the same from run to run.
    """
    n = pool.num_envs
    queues = [list(range(index, episodes, n)) for index in range(n)]
    playing: list[int] = [0] * n
    stacks = [FrameStack() for _ in range(n)]
    states: list[Optional[np.ndarray]] = [None] * n  # None: the worker is resetting

    def start_next(index: int) -> None:
        if queues[index]:
            playing[index] = queues[index].pop(0)
            states[index] = None
            pool.reset(index)

    for index in range(n):
        start_next(index)
    rewards: dict[int, float] = {}
    printed = 0
    while printed < episodes:
        waiting = []
        for index, frame, reward, done in pool.results():
            if done:
                rewards[playing[index]] = reward
                start_next(index)
                continue
            states[index] = stacks[index].reset(frame) if states[index] is None else stacks[index].push(frame)
            waiting.append(index)
        while printed in rewards:
            print("Episode: {0:d}, reward: {1}".format(printed + 1, rewards[printed]))
            printed += 1
        if waiting:
            for index, action in zip(waiting, policy(np.stack([states[i] for i in waiting]), waiting)):
                pool.step(index, action)
    return [rewards[i] for i in range(episodes)]


def evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    seed_everything(args.seed)

    checkpoint = None
    if args.policy == "greedy":
        latest = resume_path(args.checkpoint)
        if not args.checkpoint.exists() and latest.exists():
            raise UsageError(f"{args.checkpoint}: no such checkpoint file yet (training saves the best model after "
                             f"episode 100); to evaluate the latest policy, pass --checkpoint {latest}")
        checkpoint = load_checkpoint(args.checkpoint, device, ("policy_net_state_dict",))

    is_test = args.objects == "test"
    if args.num_envs == 1:
        env = make_env(is_test=is_test, max_steps=args.max_steps)
        n_actions = env.action_space.n
    else:
        env = EnvPool(args.num_envs, args.seed, is_test=is_test, max_steps=args.max_steps)
        n_actions = env.n_actions
    try:
        if checkpoint is None:
            # A generator per environment: the actions do not depend on the order the workers answer in.
            rngs = [random.Random(args.seed + index) for index in range(args.num_envs)]

            def policy(states: np.ndarray, indices: list[int]) -> list[int]:
                return [rngs[index].randrange(n_actions) for index in indices]
        else:
            policy_net = DQN(SCREEN_SIZE, SCREEN_SIZE, n_actions).to(device)
            load_state(policy_net, checkpoint, "policy_net_state_dict", args.checkpoint)
            policy_net.eval()

            def policy(states: np.ndarray, indices: list[int]) -> list[int]:
                return greedy_actions(policy_net, states)

        if args.num_envs == 1:
            rewards = run_episodes(env, policy, args.episodes)
        else:
            rewards = run_episodes_in_parallel(env, policy, args.episodes)
    finally:
        env.close()

    successes = int(sum(rewards))
    low, high = wilson_interval(successes, args.episodes)
    print(f"Success rate: {successes}/{args.episodes} = {100 * successes / args.episodes:.1f}% "
          f"(95% CI {100 * low:.1f}-{100 * high:.1f}%), {args.policy} policy on {args.objects} objects")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return report_errors(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
