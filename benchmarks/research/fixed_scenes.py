"""Can the agent learn from its images at all? Train and evaluate it on a few scenes that repeat.

    python benchmarks/research/fixed_scenes.py                              # 5 scenes, 400 episodes: ~23 min on 2 cores
    python benchmarks/research/fixed_scenes.py -- --network fine --rgb      # training flags, after the defaults

The environment draws each scene (which objects, where, how turned) from `random` and NumPy's
global generator. Here every reset reseeds both with the scene's number, 0 to --scenes - 1 in turn,
and then puts their state back, so training meets the same few scenes again and again while its own
random draws (exploration, replay sampling) go on as before. Training runs in this process with one
environment, which is where the reseeding reaches, with the fast-dqn preset and epsilon decaying over
200 episodes; flags after -- are added after these and override them. Then its final policy plays every scene
--eval-episodes times greedily, and the random policy as often, on the same scenes.

A learner that reads its images memorises a handful of scenes; one that cannot see, or a broken
update, does not. Where a configuration stays at the random policy's level on unseen objects
(learning.py), this separates the two causes. Writes OUT/scenes.csv (one row per scene and policy),
the run's checkpoints and TensorBoard logs, and OUT/policies/episode-E.pt, the policy evaluated; a
later call with more --episodes and the same training flags goes on from the saved state.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.learning import ROOT, saved_state, snapshot
from benchmarks.research.input_probe import write_rows
from grasping.checkpoints import resume_path
from grasping.cli import OneLineArgumentParser, UsageError, exit_status, positive_int, report_errors
from grasping.environment import grasp_env_class
from grasping.evaluation import evaluate
from grasping.flags import parse_training_args
from grasping.stats import wilson_interval
from grasping.training import train

TRAIN_FLAGS = ("--preset", "fast-dqn", "--eps-decay-last-frame", "200")
"""Training flags before the user's: epsilon reaches 0.05 at episode 200, half way through the default budget."""
SET_HERE = ("--num-envs", "--episodes", "--checkpoint", "--logdir", "--resume", "--render")
"""Training flags this script sets itself: one environment in this process, the budget, where the run lives."""


def reset_to_scene(reset: Callable[[], Any], scene: int) -> Any:
    """Call `reset` with `random` and NumPy's global generator seeded by `scene`, then put their state back.

    The environment draws its objects and their poses from those two, so the same number sets up the
    same scene, pixel for pixel, while every other random draw in the process goes on undisturbed.
    """
    saved = random.getstate(), np.random.get_state()
    random.seed(scene)
    np.random.seed(scene)
    try:
        return reset()
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


@contextlib.contextmanager
def repeating_scenes(count: int) -> Iterator[list[int]]:
    """Within the block, each reset of an environment in this process sets up scene 0, 1, ..., count - 1 in turn.

    Yields the list of scenes set up so far, in order, so that episodes can be matched with their scenes.
    Environments in worker processes (EnvPool) are not affected.
    """
    env_class = grasp_env_class()
    original_reset = env_class.reset
    scenes: list[int] = []

    def reset_in_turn(env: Any) -> Any:
        scene = len(scenes) % count
        scenes.append(scene)
        return reset_to_scene(lambda: original_reset(env), scene)

    env_class.reset = reset_in_turn
    try:
        yield scenes
    finally:
        env_class.reset = original_reset


def play(policy: str, checkpoint: Path, args: Any) -> list[tuple[int, int]]:
    """(scene, reward) for each of the evaluation's episodes, every scene --eval-episodes times."""
    with repeating_scenes(args.scenes) as scenes:
        result = evaluate(
            checkpoint if policy == "greedy" else None, args.scenes * args.eval_episodes, is_test=False, seed=args.seed
        )
    print(f"Success rate: {result.success_rate()}, {policy} policy on the {args.scenes} scenes")
    return list(zip(scenes, (int(reward) for reward in result.rewards)))


def main() -> int:
    own, given = sys.argv[1:], []
    if "--" in own:
        own, given = own[: own.index("--")], own[own.index("--") + 1 :]
    train_flags = [*TRAIN_FLAGS, *given]
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=positive_int, default=5, help="scenes to train and evaluate on")
    parser.add_argument("--episodes", type=positive_int, default=400, help="training episodes in all")
    parser.add_argument("--eval-episodes", type=positive_int, default=10, help="episodes per scene and policy")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random policy's actions")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "fixed-scenes",
        help="folder of the run and its results",
    )
    args = parser.parse_args(own)
    for flag in SET_HERE:
        if any(arg == flag or arg.startswith(flag + "=") for arg in given):
            parser.error(f"training flag {flag} is set by this script; leave it out")

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "policy_dqn.pt"
    command = [
        *train_flags,
        "--num-envs",
        "1",
        "--episodes",
        str(args.episodes),
        "--solve-score",
        "101",
        "--clip-every",
        "0",
        "--checkpoint",
        str(checkpoint),
        "--logdir",
        str(args.out / "logs"),
    ]
    if resume_path(checkpoint).exists():
        command.append("--resume")
    with repeating_scenes(args.scenes):
        run = train(parse_training_args(command))
    if run.failure is not None:
        raise UsageError(f"training failed: {run.failure}")
    if run.stop is not None:
        return exit_status(run.stop)
    episode = saved_state(args.out)[0]
    policy = snapshot(args.out, episode)

    played = {name: play(name, policy, args) for name in ("greedy", "random")}
    rows = []
    for scene in range(args.scenes):
        for name, outcomes in played.items():
            rewards = [reward for drawn, reward in outcomes if drawn == scene]
            rows.append(
                {
                    "episode": episode,
                    "scene": scene,
                    "policy": name,
                    "successes": sum(rewards),
                    "episodes": len(rewards),
                }
            )
    write_rows(args.out / "scenes.csv", rows)

    print(f"Episode {episode}'s policy, {args.eval_episodes} episodes per scene:")
    print("| scene | greedy | random |\n| --: | --: | --: |")
    for scene in range(args.scenes):
        cells = [f"{r['successes']}/{r['episodes']}" for r in rows if r["scene"] == scene]
        print(f"| {scene} | {cells[0]} | {cells[1]} |")
    totals = []
    for outcomes in played.values():
        successes = sum(reward for _, reward in outcomes)
        low, high = wilson_interval(successes, len(outcomes))
        totals.append(
            f"{successes}/{len(outcomes)} ({100 * successes / len(outcomes):.0f}%, {100 * low:.0f}-{100 * high:.0f}%)"
        )
    print(f"| all | {totals[0]} | {totals[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(report_errors(main))
