"""Evaluate a trained grasping policy greedily, or the uniform random policy as the baseline.

    python bullet_kuka_eval.py                          # policy_dqn.pt, 10 episodes on test objects
    python bullet_kuka_eval.py --episodes 100 --objects train
    python bullet_kuka_eval.py --policy random --episodes 100

Prints each episode's reward as the lecture does, then the success rate with its 95% interval.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from common import (
    DQN,
    SCREEN_SIZE,
    FrameStack,
    OneLineArgumentParser,
    UsageError,
    greedy_action,
    load_checkpoint,
    load_state,
    make_env,
    positive_int,
    preprocess_frame,
    resolve_device,
    resume_path,
    seed_everything,
    wilson_interval,
)


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = OneLineArgumentParser(description="Evaluate a DQN grasping policy on KukaDiverseObjectEnv (pybullet).")
    parser.add_argument("--episodes", type=positive_int, default=10, help="episodes to evaluate (lecture: 10)")
    parser.add_argument("--max-steps", type=positive_int, default=20,
                        help="actions per episode before the environment ends it (maxSteps)")
    parser.add_argument("--objects", choices=("test", "train"), default="test",
                        help="held-out test objects (lecture) or the training objects")
    parser.add_argument("--policy", choices=("greedy", "random"), default="greedy",
                        help="the checkpoint's greedy policy, or uniform random actions as the baseline")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs; auto picks CUDA when a GPU is usable")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the scenes; the same seed shows every policy the same objects")
    parser.add_argument("--checkpoint", type=Path, default=Path("policy_dqn.pt"),
                        help="checkpoint holding 'policy_net_state_dict' (ignored with --policy random)")
    return parser.parse_args(argv)


def evaluate(args) -> int:
    device = resolve_device(args.device)
    seed_everything(args.seed)
    rng = random.Random(args.seed)

    checkpoint = None
    if args.policy == "greedy":
        latest = resume_path(args.checkpoint)
        if not args.checkpoint.exists() and latest.exists():
            raise UsageError(f"{args.checkpoint}: no such checkpoint file yet (training saves the best model after "
                             f"episode 100); to evaluate the latest policy, pass --checkpoint {latest}")
        checkpoint = load_checkpoint(args.checkpoint, device, ("policy_net_state_dict",))

    env = make_env(is_test=args.objects == "test", max_steps=args.max_steps)
    n_actions = env.action_space.n
    if checkpoint is not None:
        policy_net = DQN(SCREEN_SIZE, SCREEN_SIZE, n_actions).to(device)
        load_state(policy_net, checkpoint, "policy_net_state_dict", args.checkpoint)
        policy_net.eval()

    def act(state: torch.Tensor) -> int:
        if checkpoint is None:
            return rng.randrange(n_actions)
        return greedy_action(policy_net, state)

    successes = 0
    try:
        for i_episode in range(args.episodes):
            frames = FrameStack()
            state = frames.reset(preprocess_frame(env.reset()).to(device))
            done = False
            while not done:
                obs, reward, done, _ = env.step(act(state))
                state = frames.push(preprocess_frame(obs).to(device))
            successes += reward
            print("Episode: {0:d}, reward: {1}".format(i_episode + 1, reward))
    finally:
        env.close()

    low, high = wilson_interval(successes, args.episodes)
    print(f"Success rate: {successes}/{args.episodes} = {100 * successes / args.episodes:.1f}% "
          f"(95% CI {100 * low:.1f}-{100 * high:.1f}%), {args.policy} policy on {args.objects} objects")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return evaluate(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
