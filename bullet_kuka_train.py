"""Train the lecture's DQN, or the pose agent, to grasp objects with a KUKA arm in pybullet from camera images.

    python bullet_kuka_train.py                 # the lecture's run, best model in policy_dqn.pt
    python bullet_kuka_train.py --num-envs 8    # the same algorithm, 8 environments in parallel
    python bullet_kuka_train.py --resume        # continue from policy_dqn.resume.pt
    python bullet_kuka_train.py --preset pose --num-envs 2    # the pose agent (grasping/pose_agent.py)

Saves the best policy (mean success over the last 100 episodes) to --checkpoint, keeps a resumable state next
to it, and logs to TensorBoard under --logdir. The loops are in grasping/training.py, the flags in
grasping/flags.py; this script prints the lecture's closing lines.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta

from grasping.cli import Terminated, exit_status, raise_terminated, report_errors
from grasping.flags import parse_training_args
from grasping.runlog import BEST_MODEL_AFTER_EPISODE
from grasping.training import TrainingRun, train


def report(run: TrainingRun, args: argparse.Namespace) -> int:
    """The lecture's closing lines and the throughput; returns the exit status."""
    if run.solved:
        print(f"Environment solved in {run.completed:d} episodes!\tAverage Score: {run.mean_reward:.2f}")
        print(f"Average Score: {run.mean_reward:.2f}")
    elif run.stop is not None:
        how = "Terminated" if isinstance(run.stop, Terminated) else "Interrupted"
        print(f"{how} after {run.completed} episodes: state saved to {run.state_path}; continue with --resume")
    if not args.checkpoint.exists():
        print(
            f"No best model saved yet (that starts after episode {BEST_MODEL_AFTER_EPISODE}); "
            f"the last policy is in {run.state_path}"
        )
    print(f"Elapsed time: {timedelta(seconds=run.elapsed_seconds)}")
    print(
        f"Throughput: {run.episodes_per_second:.3f} episodes/s, "
        f"{run.transitions / run.seconds:.2f} env steps/s, "
        f"{run.gradient_steps / run.seconds:.2f} gradient steps/s "
        f"with {args.num_envs} environment{'s' if args.num_envs > 1 else ''}"
    )
    if run.failure is not None:
        print(
            f"error: {run.failure}; the run's state is saved in {run.state_path}: continue with --resume",
            file=sys.stderr,
        )
        return 1
    return exit_status(run.stop) if run.stop is not None else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_training_args(argv)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return report_errors(lambda: report(train(args), args))
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
