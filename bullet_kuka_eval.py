"""Evaluate a trained grasping policy greedily, or the uniform random policy as the baseline.

    python bullet_kuka_eval.py                          # policy_dqn.pt, 10 episodes on test objects
    python bullet_kuka_eval.py --episodes 100 --objects train
    python bullet_kuka_eval.py --policy random --episodes 100 --num-envs 4
    python bullet_kuka_eval.py --episodes 3 --gif grasp.gif    # the scene and the network's view

Prints each episode's reward as the lecture does, then the success rate with its 95% interval.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from common import ACTION_NAMES, resolve_device
from grasping.checkpoints import check_writable_folder, resume_path
from grasping.cli import (OneLineArgumentParser, UsageError, add_backend_arguments, check_backend_arguments, positive_int,
                          report_errors, seed_int)
from grasping.environment import display_problem
from grasping.evaluation import evaluate
from grasping.recording import EpisodeRecorder

PRETRAINED = "pretrained/policy_dqn.pt"
"""The shipped policy, trained with --preset fast (see the README)."""


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
    add_backend_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs; auto picks CUDA when a GPU is usable")
    parser.add_argument("--seed", type=seed_int, default=1,
                        help="seed of the scenes; the same seed and --num-envs show every policy the same objects")
    parser.add_argument("--checkpoint", type=Path, default=Path("policy_dqn.pt"),
                        help="checkpoint holding 'policy_net_state_dict' (ignored with --policy random)")
    parser.add_argument("--gif", type=Path, default=None,
                        help="record the episodes into this animated GIF: a 256x256 view of the scene beside "
                             "the frame the network sees, with step, action and outcome; needs no display")
    parser.add_argument("--overwrite", action="store_true", help="replace the --gif file if it exists")
    parser.add_argument("--render", action="store_true", help="watch the episodes in the PyBullet GUI (needs a display)")
    args = parser.parse_args(argv)
    check_backend_arguments(parser, args)
    if (args.gif is not None or args.render) and args.num_envs > 1:
        flag = "--gif" if args.gif is not None else "--render"
        parser.error(f"argument {flag}: works with the episodes played in this process; use --num-envs 1")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        parser.error(f"argument --gif: the file name must end in .gif, got {args.gif}")
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse, in one line each, what would fail later: no display, a GIF that exists, no checkpoint yet."""
    if args.render and (problem := display_problem()):
        raise UsageError(f"--render: {problem}; evaluate without it, or record the episodes with --gif out.gif")
    if args.gif is not None:
        if args.gif.exists() and not args.overwrite:
            raise UsageError(f"--gif {args.gif}: the file exists; pass --overwrite to replace it, or another name")
        check_writable_folder(args.gif.parent, "--gif")
    if args.policy == "greedy" and not args.checkpoint.exists():
        latest = resume_path(args.checkpoint)
        if latest.exists():
            raise UsageError(f"{args.checkpoint}: no such checkpoint file yet (training saves the best model after "
                             f"episode 100); to evaluate the latest policy, pass --checkpoint {latest}")
        raise UsageError(f"{args.checkpoint}: no such checkpoint file; train one (python bullet_kuka_train.py "
                         f"--preset fast) or pass --checkpoint {PRETRAINED}")


def action_summary(sequences: list[list[int]]) -> str:
    """How often each action was taken, and how many episodes took one action only: a policy that ignores
    the scene repeats itself."""
    counts = Counter(action for actions in sequences for action in actions)
    repeated = sum(len(set(actions)) == 1 for actions in sequences)
    taken = ", ".join(f"{name} {counts[action]}" for action, name in enumerate(ACTION_NAMES))
    return f"Actions: {taken}; {repeated}/{len(sequences)} episodes repeat one action throughout"


def print_episode(number: int, reward: float) -> None:
    print("Episode: {0:d}, reward: {1}".format(number, reward))


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    check_inputs(args)
    recorder = EpisodeRecorder() if args.gif is not None else None
    result = evaluate(args.checkpoint if args.policy == "greedy" else None, args.episodes, args.objects == "test",
                      args.seed, args.num_envs, device, args.max_steps, args.render, recorder,
                      on_episode=print_episode, backend=args.backend, ray_address=args.ray_address, on_start=print)
    if recorder is not None:
        recorder.save_gif(args.gif)
        print(f"Recorded {len(recorder.frames)} frames of {args.episodes} episode{'s' if args.episodes > 1 else ''} "
              f"in {args.gif}")
    if result.lost:
        print(f"Episodes lost with their worker and played again: {result.lost}")
    print(action_summary(result.sequences))
    print(f"Success rate: {result.success_rate()}, {args.policy} policy on {args.objects} objects")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return report_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
