"""Evaluate a trained grasping policy greedily, or the uniform random policy as the baseline.

    python bullet_kuka_eval.py                          # policy_dqn.pt, 10 episodes on test objects
    python bullet_kuka_eval.py --checkpoint pretrained/pose_agent.pt --episodes 200 --num-envs 2
    python bullet_kuka_eval.py --episodes 100 --objects train
    python bullet_kuka_eval.py --policy random --episodes 100 --num-envs 4
    python bullet_kuka_eval.py --episodes 3 --gif grasp.gif    # the scene and the network's view

Prints each episode's reward as the lecture does, then the success rate with its 95% interval. The playing is
grasping/evaluation.py's, the flags grasping/flags.py's.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from common import ACTION_NAMES
from grasping.checkpoints import check_writable_folder, resume_path
from grasping.cli import UsageError, report_errors, resolve_device
from grasping.environment import display_problem
from grasping.evaluation import evaluate
from grasping.flags import parse_eval_args
from grasping.recording import EpisodeRecorder

PRETRAINED = "pretrained/pose_agent.pt"
"""The shipped policy: the pose agent trained with --preset pose (see the README)."""


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
            raise UsageError(
                f"{args.checkpoint}: no such checkpoint file yet (training saves the best model after "
                f"episode 100); to evaluate the latest policy, pass --checkpoint {latest}"
            )
        raise UsageError(
            f"{args.checkpoint}: no such checkpoint file; train one (python bullet_kuka_train.py "
            f"--preset pose) or pass --checkpoint {PRETRAINED}"
        )


def action_summary(sequences: list[list[int]]) -> str:
    """How often each action was taken, and how many episodes took one action only: a policy that ignores
    the scene repeats itself."""
    counts = Counter(action for actions in sequences for action in actions)
    repeated = sum(len(set(actions)) == 1 for actions in sequences)
    taken = ", ".join(f"{name} {counts[action]}" for action, name in enumerate(ACTION_NAMES))
    return f"Actions: {taken}; {repeated}/{len(sequences)} episodes repeat one action throughout"


def print_episode(number: int, reward: float) -> None:
    print(f"Episode: {number:d}, reward: {reward}")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    check_inputs(args)
    recorder = EpisodeRecorder() if args.gif is not None else None
    result = evaluate(
        args.checkpoint if args.policy == "greedy" else None,
        args.episodes,
        args.objects == "test",
        args.seed,
        args.num_envs,
        device,
        args.max_steps,
        args.render,
        recorder,
        on_episode=print_episode,
        backend=args.backend,
        ray_address=args.ray_address,
        on_start=print,
    )
    if recorder is not None:
        recorder.save_gif(args.gif)
        print(
            f"Recorded {len(recorder.frames)} frames of {args.episodes} episode{'s' if args.episodes > 1 else ''} "
            f"in {args.gif}"
        )
    if result.lost:
        print(f"Episodes lost with their worker and played again: {result.lost}")
    print(action_summary(result.sequences))
    print(f"Success rate: {result.success_rate()}, {args.policy} policy on {args.objects} objects")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_eval_args(argv)
    return report_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
