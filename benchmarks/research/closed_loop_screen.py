"""Closed-loop choice for the pose agent, screened on one set of episodes: a network fit on every step's frame,
each labelled with the episode's final commanded pose and its reward, chooses again at every step among the final
poses still in reach, where the agent chooses once on the first frame.

    python benchmarks/research/closed_loop_screen.py collect \
        benchmarks/results/pose-height-boltzmann-scales2-seed7/policies/episode-1000.pt --episodes 1500
    python benchmarks/research/closed_loop_screen.py screen open closed late --eval-episodes 200 --eval-seed 2000

`collect` plays a saved pose policy on training objects (exploring with --epsilon, drawn as `--exploration
boltzmann` draws), keeping every frame an action was chosen on, the timestep, the episode's final commanded pose
and its reward, in episodes.npz under --out. `screen` refits networks of that policy's configuration on them, each
as the agent refits (fresh weights, 10 passes, batches of 32, Adam at 1e-3, seed 0):
  first: on the first frames only, the agent's own samples;
  every: on every step's frame;
  later: on the frames after the first.
Variants, each played greedily on the same test scenes (2 workers, as learning.py plays them):
  open:   `first` on the first frame, as the agent plays;
  closed: `every` on every frame up to the horizon, choosing again each step among the final poses still in reach;
  late:   `first` on the first frame, then `later` on each later frame up to the horizon.
The earlier re-planning screen (choice_screen.py's `replan`) scored later frames with a network fit on first
frames only; here the later frames have labels of their own. Prints each variant's successes with the 95% interval
and, against the first, the scenes won and lost; appends them to screen.csv under --out.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.learning import ROOT
from benchmarks.research.choice_screen import Replanning, play_test_scenes, scenes_won_lost
from benchmarks.research.replay_screen import refit
from common import Observation, seed_everything
from grasping.checkpoints import load_checkpoint, observation_of
from grasping.cli import OneLineArgumentParser, positive_int
from grasping.kinematics import START_POSE, Pose, move, pose_array
from grasping.pool import open_pool
from grasping.pose_agent import GraspNet, PoseLattice, PosePolicy, saved_grasp_net
from grasping.rollouts import Rollouts
from grasping.stats import success_rate

OUT = ROOT / "benchmarks" / "results" / "closed-loop-screen"
NETS = {"open": ("first", "first"), "closed": ("every", "every"), "late": ("first", "later")}
"""Each variant's networks: the one that chooses on the first frame, and the one that chooses again on later ones."""


def collect(checkpoint: Path, episodes: int, epsilon: float, seed: int, out: Path) -> None:
    """Play `checkpoint`'s policy on training objects and write every frame an action was chosen on, with its
    episode, timestep, the episode's final commanded pose and reward, to out/episodes.npz."""
    net = saved_grasp_net(load_checkpoint(checkpoint, torch.device("cpu"), ("policy_net_state_dict",)), checkpoint)
    observation = observation_of(net.config)
    policy = PosePolicy(net.eval(), PoseLattice(), exploration="boltzmann")
    seed_everything(seed)
    frames: dict[int, list[np.ndarray]] = {}
    outcome: dict[int, tuple[Pose, float]] = {}
    started = time.time()
    with open_pool(
        "local", 2, seed, False, 20, observation.camera_size, observation.height, observation.overhead
    ) as pool:
        rollouts = Rollouts(pool, observation, episodes)
        while not rollouts.finished:
            for step in rollouts.steps():
                if step.done:
                    outcome[step.episode] = functools.reduce(move, step.actions, START_POSE), step.reward
                elif step.frame is not None:
                    frames.setdefault(step.episode, []).append(step.frame)
            rollouts.act(lambda states, indices, timesteps: policy(states, indices, timesteps, epsilon))
    rows = [(episode, t) for episode in range(episodes) for t in range(len(frames[episode]))]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "episodes.npz",
        frames=np.stack([frames[episode][t] for episode, t in rows]),
        episode=np.array([episode for episode, _ in rows]),
        timestep=np.array([t for _, t in rows]),
        poses=pose_array([outcome[episode][0] for episode, _ in rows]),
        rewards=np.array([outcome[episode][1] for episode, _ in rows], dtype=np.float32),
        config=np.array(json.dumps(net.config)),
    )
    lifted = sum(reward for _, reward in outcome.values())
    print(
        f"{episodes} episodes ({len(rows)} frames), {success_rate(int(lifted), episodes)} lifted, "
        f"in {time.time() - started:.0f} s: {out / 'episodes.npz'}",
        flush=True,
    )


def fit(data: dict[str, np.ndarray], which: str, config: dict, observation: Observation, seed: int) -> GraspNet:
    """A network of `config` refit as the agent refits on the collected frames `which` names (first, every, later)."""
    keep = {"first": data["timestep"] == 0, "every": data["timestep"] >= 0, "later": data["timestep"] > 0}[which]
    memory = {
        "frames": torch.from_numpy(data["frames"][keep]),
        "poses": torch.from_numpy(data["poses"][keep]),
        "rewards": torch.from_numpy(data["rewards"][keep]),
        "pushed": int(keep.sum()),
        "rng": np.random.default_rng(seed).bit_generator.state,
    }
    net = refit({"replay_memory": memory, "config": config}, observation, seed)
    assert isinstance(net, GraspNet)
    return net


def screen(variants: list[str], eval_episodes: int, eval_seed: int, seed: int, out: Path) -> None:
    with np.load(out / "episodes.npz") as loaded:
        data = {key: loaded[key] for key in loaded.files}
    config = json.loads(str(data.pop("config")))
    observation = observation_of(config)
    torch.set_num_threads(1)
    episodes = int((data["timestep"] == 0).sum())
    nets: dict[str, GraspNet] = {}
    outcomes: dict[str, list[float]] = {}
    for name in variants:
        started = time.time()
        for which in NETS[name]:
            if which not in nets:
                nets[which] = fit(data, which, config, observation, seed)
        fitted = time.time() - started
        first, late = (nets[which] for which in NETS[name])
        policy = PosePolicy(first, PoseLattice()) if name == "open" else Replanning(first, PoseLattice(), late)
        rewards = play_test_scenes(policy, observation, eval_episodes, eval_seed)
        outcomes[name] = rewards
        won, lost = scenes_won_lost(rewards, outcomes[variants[0]])
        print(
            f"{name}: {episodes} episodes, fit {fitted:.0f} s, {success_rate(int(sum(rewards)), len(rewards))}, "
            f"against {variants[0]} {won} scenes won and {lost} lost",
            flush=True,
        )
        new = not (out / "screen.csv").exists()
        with open(out / "screen.csv", "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["variant", "episodes", "seed", "successes", "eval_episodes", "eval_seed"])
            writer.writerow([name, episodes, seed, int(sum(rewards)), len(rewards), eval_seed])


def main(argv: list[str]) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gather = commands.add_parser("collect", help="play a saved policy and keep every step's frame")
    gather.add_argument("checkpoint", type=Path, help="a pose agent's saved policy")
    gather.add_argument("--episodes", type=positive_int, default=1500, help="training-object episodes to play")
    gather.add_argument("--epsilon", type=float, default=0.5, help="share of episodes that explore (boltzmann)")
    gather.add_argument("--seed", type=int, default=5000, help="seed of the training scenes and the exploration")
    compare = commands.add_parser("screen", help="refit on the collected episodes and play each variant")
    compare.add_argument("variants", nargs="+", choices=sorted(NETS))
    compare.add_argument("--eval-episodes", type=positive_int, default=200, help="greedy test scenes per variant")
    compare.add_argument("--eval-seed", type=int, default=2000, help="seed of the test scenes")
    compare.add_argument("--seed", type=int, default=0, help="seed of the refits' weights and order")
    for sub in (gather, compare):
        sub.add_argument("--out", type=Path, default=OUT, help="folder of episodes.npz and screen.csv")
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(args.checkpoint, args.episodes, args.epsilon, args.seed, args.out)
    else:
        screen(args.variants, args.eval_episodes, args.eval_seed, args.seed, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
