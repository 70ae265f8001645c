"""How far above the random policy could a policy get? Play every scene many times with random moves.

    python benchmarks/research/scene_ceiling.py    # 100 test scenes, 10 tries each: ~14 min on 2 cores
    python benchmarks/research/scene_ceiling.py --objects train --scenes 20

Each try resets the environment to the same scene (fixed_scenes.reset_to_scene: scene s is what the
environment draws with `random` and NumPy's generator seeded by s) and plays uniformly random
actions until the episode ends. The physics is deterministic, so the moves of a try that lifted an
object lift it again when replayed from the same scene; the script checks this by replaying each
scene's first successful try once. The share of scenes lifted at least once is therefore a floor
under the best success rate any policy can reach on these scenes, and the share of all tries that
lifted one is the random policy's rate, the line to beat. The gap between the two is the room a
learned policy has. Writes OUT/scenes.csv, one row per scene: successes, tries, and the replay's reward.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.learning import ROOT
from benchmarks.research.fixed_scenes import reset_to_scene
from benchmarks.research.input_probe import write_rows
from grasping.cli import OneLineArgumentParser, positive_int, report_errors, seed_int
from grasping.environment import make_env
from grasping.stats import success_rate


@functools.cache
def environment(is_test: bool) -> Any:
    """This worker process's one environment, built on its first scene."""
    return make_env(is_test)


def play(env: Any, scene: int, next_action: Callable[[], int]) -> tuple[list[int], float]:
    """One episode from `scene`: the actions taken and the final reward."""
    reset_to_scene(env.reset, scene)
    actions: list[int] = []
    done = False
    while not done:
        actions.append(next_action())
        _, reward, done, _ = env.step(actions[-1])
    return actions, reward


def try_scene(scene: int, tries: int, seed: int, is_test: bool) -> dict[str, Any]:
    """`tries` random episodes from `scene`, then the first successful one's actions replayed."""
    env = environment(is_test)
    rng = np.random.default_rng([seed, scene])  # the same tries whichever worker plays the scene
    outcomes = [play(env, scene, lambda: int(rng.integers(env.action_space.n))) for _ in range(tries)]
    successes = [actions for actions, reward in outcomes if reward > 0]
    replayed: float | None = None
    if successes:
        moves = iter(successes[0])
        replayed = play(env, scene, lambda: next(moves))[1]
    return {
        "scene": scene,
        "successes": len(successes),
        "tries": tries,
        "replay_reward": "" if replayed is None else int(replayed),
    }


def ignore_ctrl_c() -> None:
    """Leave Ctrl-C to the main process, which reports it in one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=positive_int, default=100, help="scenes 0 to N-1 to play")
    parser.add_argument("--tries", type=positive_int, default=10, help="random episodes per scene")
    parser.add_argument("--objects", choices=("test", "train"), default="test", help="which object set")
    parser.add_argument("--num-workers", type=positive_int, default=2, help="processes, each with one environment")
    parser.add_argument("--seed", type=seed_int, default=1, help="seed of the random actions")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "scene-ceiling", help="folder for scenes.csv"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    executor = ProcessPoolExecutor(args.num_workers, mp_context=get_context("spawn"), initializer=ignore_ctrl_c)
    try:
        play_scene = functools.partial(try_scene, tries=args.tries, seed=args.seed, is_test=args.objects == "test")
        rows = list(executor.map(play_scene, range(args.scenes)))
    finally:
        executor.shutdown(cancel_futures=True)
    write_rows(args.out / "scenes.csv", rows)

    lifted = [row for row in rows if row["successes"]]
    print(f"Random policy, {args.tries} tries in each of {args.scenes} scenes, {args.objects} objects:")
    tries_lifted = sum(row["successes"] for row in rows)
    print(f"  tries that lifted an object:  {success_rate(tries_lifted, args.scenes * args.tries)}")
    print(f"  scenes lifted at least once:  {success_rate(len(lifted), args.scenes)}")
    print(f"  replays that lifted it again: {sum(r['replay_reward'] for r in lifted)}/{len(lifted)}")
    spread = Counter(row["successes"] for row in rows)
    print("  scenes by successes:          " + ", ".join(f"{k}: {spread[k]}" for k in range(args.tries + 1)))
    return 0


if __name__ == "__main__":
    sys.exit(report_errors(main))
