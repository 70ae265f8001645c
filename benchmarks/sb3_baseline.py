"""Stable-Baselines3's DQN, trained through the Gymnasium environment and measured like the learning benchmark's rows.

    python benchmarks/sb3_baseline.py     # 3,000 episodes; greedy on the 200 test scenes at 1,000, 2,000 and 3,000
    python benchmarks/sb3_baseline.py --name sb3-dqn-short --episodes 300 --eval-every 300 --eval-episodes 20

This is what a user would pick instead of the project's agents: a library DQN, `CnnPolicy` on the camera image,
with SB3's documented defaults but for three that this environment's budget needs (`ADAPTED`) and one that
follows from stepping several environments (`hyperparameters`). It trains on the training objects in
`--num-envs` SubprocVecEnv workers of `KukaDiverseObjectGrasp-v0`, and every
`--eval-every` episodes plays its deterministic action greedily with `grasping.evaluation.play_in_parallel`
on the benchmark's scenes (`--eval-seed`, `--eval-envs`, test objects), as benchmarks/learning.py does; the
random policy is measured once on the same scenes.

Writes benchmarks/results/NAME/: config.json (the settings, SB3's hyperparameters, the machine),
learning.csv (the learning benchmark's columns), policies/episode-E.pt (the policy's state_dict at each
evaluation), learning.png, state/ (what a later call resumes from) and logs/ (SB3's TensorBoard curves, fps
included); benchmarks/results/learning.png is drawn again with every configuration.
Ctrl-C or SIGTERM saves the state within a step and ends the call; the same command again goes on. The
state is written without pickle (torch tensors, NumPy arrays, JSON), so resuming unpickles nothing.
Needs the `sb3` extra: pip install -e '.[sb3]'.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import timeit
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.learning import append_row, evaluation_row, machine_name, plot, read_config, read_rows
from common import Observation, seed_everything
from grasping.checkpoints import atomic_write
from grasping.cli import STOP_SIGNALS, OneLineArgumentParser, positive_int
from grasping.environment import silenced_output
from grasping.evaluation import play_in_parallel, random_policy
from grasping.pool import open_pool
from grasping.rollouts import Policy

try:
    # SB3 imports the old gym too, to convert its environments; its notice about NumPy 2 is not for this run.
    with warnings.catch_warnings(), silenced_output():
        warnings.simplefilter("ignore")
        import stable_baselines3
        from stable_baselines3 import DQN
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import SubprocVecEnv
except ModuleNotFoundError as error:  # pragma: no cover - the message is the behaviour
    sys.exit(f"benchmarks/sb3_baseline.py needs Stable-Baselines3 ({error.name} is missing): pip install -e '.[sb3]'")

from grasping.gymnasium_env import KukaDiverseObjectGrasp

RESULTS = Path(__file__).resolve().parent / "results"
MAX_STEPS = 20
"""Actions per episode at most (the lecture's maxSteps); with the height hack an episode takes 7 or 8."""
STEPS_PER_EPISODE = 7.5

ADAPTED = {
    "buffer_size": 30_000,
    "target_update_interval": 1_000,
    "exploration_fraction": 0.1 * STEPS_PER_EPISODE / MAX_STEPS,
}
"""SB3's DQN defaults that this environment's budget changes. Its 1,000,000 transitions would reserve 13.8 GB of
camera images where a run of 3,000 episodes makes about 22,500: 30,000 keep them all, as the default would.
A target update every 10,000 steps would come twice in the whole run: 1,000 is the RL Zoo's Atari value.
SB3 counts its budget in steps and this benchmark in episodes, so `learn` is given the most steps the
episodes can take (`MAX_STEPS` each) and stopped at the last episode; the exploration fraction is scaled so
that epsilon reaches its floor after a tenth of the steps the run is expected to make, as the default 0.1
would of a step budget."""


class Progress(BaseCallback):
    """Counts finished episodes and stops learning at `target` or at a stop signal."""

    def __init__(self, episodes: int, target: int) -> None:
        super().__init__()
        self.episodes, self.target, self.stop_signal = episodes, target, 0

    def _on_step(self) -> bool:
        self.episodes += int(np.sum(self.locals["dones"]))
        return self.episodes < self.target and not self.stop_signal


def greedy_policy(model: DQN) -> Policy:
    """The model's deterministic action on each state's last camera image, as `play_in_parallel` asks for."""

    def policy(states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
        images = states[:, -1].transpose(0, 2, 3, 1)  # (B, 3, H, W) frames of the last step -> (B, H, W, 3)
        actions, _ = model.predict(images, deterministic=True)
        return [int(action) for action in actions]

    return policy


REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
"""The replay buffer's arrays that `save_state` writes and `load_state` puts back."""


def save_state(model: DQN, folder: Path, progress: dict) -> None:
    """The model's networks and optimizer (torch tensors), its replay memory (NumPy arrays) and counters (JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"policy": model.policy.state_dict(), "optimizer": model.policy.optimizer.state_dict()}, folder / "model.pt"
    )
    buffer = model.replay_buffer
    assert buffer is not None
    with open(folder / "replay.npz", "wb") as file:
        np.savez(file, **{key: getattr(buffer, key) for key in REPLAY_ARRAYS})
    counters = {"num_timesteps": model.num_timesteps, "n_updates": model._n_updates, "pos": buffer.pos}
    with atomic_write(folder / "progress.json") as file:
        file.write(json.dumps({**progress, **counters, "full": buffer.full}).encode())


def load_state(model: DQN, folder: Path) -> dict:
    """What `save_state` wrote, put back into a new model of the same settings; the progress counters."""
    saved = torch.load(folder / "model.pt", map_location=model.device, weights_only=True)
    model.policy.load_state_dict(saved["policy"])
    model.policy.optimizer.load_state_dict(saved["optimizer"])
    progress = json.loads((folder / "progress.json").read_text())
    buffer = model.replay_buffer
    assert buffer is not None
    with np.load(folder / "replay.npz", allow_pickle=False) as arrays:
        for key in REPLAY_ARRAYS:
            getattr(buffer, key)[...] = arrays[key]
    buffer.pos, buffer.full = progress["pos"], progress["full"]
    model.num_timesteps, model._n_updates = progress["num_timesteps"], progress["n_updates"]
    return progress


def argument_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--name", default="sb3-dqn", help="the folder under benchmarks/results/ (default: sb3-dqn)")
    parser.add_argument("--episodes", type=positive_int, default=3000, help="training episodes in all")
    parser.add_argument("--eval-every", type=positive_int, default=1000, help="evaluate after every N episodes")
    parser.add_argument("--eval-episodes", type=positive_int, default=200, help="test scenes per evaluation")
    parser.add_argument("--eval-seed", type=int, default=1000, help="the evaluation scenes' seed (the benchmark's)")
    parser.add_argument(
        "--eval-envs", type=positive_int, default=2, help="evaluation workers; with the seed, fix the scenes"
    )
    parser.add_argument(
        "--num-envs",
        type=positive_int,
        default=8,
        help="training environments (SubprocVecEnv); SB3 steps them in lockstep, so that one resetting (0.8 s) "
        "holds up the rest: with 4 per core, 2 cores stay busy",
    )
    parser.add_argument("--seed", type=int, default=1, help="seeds SB3, its environments and torch")
    parser.add_argument("--device", default="auto", help="SB3's device: auto, cpu or cuda")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME's folder and the combined plot go")
    return parser


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """DQN's arguments that differ from SB3's defaults, and learn's total_timesteps.

    SB3's `train_freq` of 4 counts steps of the vectorised environment, each a transition of every
    environment: `gradient_steps` of one per environment keeps the default's one update per 4 transitions.
    """
    return {
        "policy": "CnnPolicy",
        **ADAPTED,
        "gradient_steps": args.num_envs,
        "total_timesteps": args.episodes * MAX_STEPS,
    }


def measure(policy: Policy, args: argparse.Namespace, name: str, episode: int, seconds: float) -> dict:
    """`policy` greedily on the benchmark's test scenes, as a learning.csv row."""
    observation = Observation(size=48, rgb=True)  # the camera image itself, as the model saw it
    with open_pool("local", args.eval_envs, args.eval_seed, True) as pool:
        result = play_in_parallel(pool, observation, policy, args.eval_episodes)
    print(f"{name} at episode {episode}: {result.success_rate()}", flush=True)
    return evaluation_row(result, name, "test", episode, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    folder = args.results / args.name
    settings = {
        key: getattr(args, key) for key in ("episodes", "eval_every", "eval_episodes", "eval_seed", "eval_envs")
    }
    config_path = folder / "config.json"
    if config_path.exists():
        recorded = read_config(config_path, parser)  # a file it did not write is refused in one line
        changed = [key for key, value in settings.items() if recorded.get(key) != value]
        if changed:
            sys.exit(f"{config_path} was run with other settings ({', '.join(changed)}); pass another --name")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "train_flags": [],
            "library": f"stable-baselines3 {stable_baselines3.__version__}",
            "algorithm": "DQN",
            "hyperparameters": hyperparameters(args),
            "num_envs": args.num_envs,
            **settings,
            "objects": "test",
            "machine": machine_name(args.device),
            "command": " ".join(["python benchmarks/sb3_baseline.py", *(sys.argv[1:] if argv is None else argv)]),
        }
        with atomic_write(config_path) as file:
            file.write((json.dumps(config, indent=1) + "\n").encode())
    csv_path = folder / "learning.csv"
    rows = read_rows(csv_path)

    seed_everything(args.seed)
    torch.set_num_threads(1)  # the other cores belong to the environments' physics, as in the project's training
    # Workers born with the stop signals ignored leave them to this process, which saves and closes them.
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        env = make_vec_env(
            KukaDiverseObjectGrasp,
            n_envs=args.num_envs,
            seed=args.seed,
            vec_env_cls=SubprocVecEnv,
            env_kwargs={"is_test": False, "max_steps": MAX_STEPS},
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    params = hyperparameters(args)
    total_timesteps = params.pop("total_timesteps")
    model = DQN(env=env, seed=args.seed, device=args.device, tensorboard_log=str(folder / "logs"), verbose=0, **params)
    progress = {"episodes": 0, "train_seconds": 0.0}
    if (folder / "state" / "progress.json").exists():
        progress = load_state(model, folder / "state")
        print(f"resumed at episode {progress['episodes']}", flush=True)

    callback = Progress(int(progress["episodes"]), 0)

    def on_stop(signum: int, frame: Any) -> None:
        callback.stop_signal = signum

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop)
    try:
        for target in range(args.eval_every, args.episodes + args.eval_every, args.eval_every):
            target = min(target, args.episodes)
            if callback.episodes < target:
                callback.target = target
                start = timeit.default_timer()
                model.learn(
                    total_timesteps - model.num_timesteps,
                    callback=callback,
                    reset_num_timesteps=False,
                    tb_log_name="dqn",
                    progress_bar=False,
                )
                progress = {
                    "episodes": callback.episodes,
                    "train_seconds": progress["train_seconds"] + timeit.default_timer() - start,
                }
                save_state(model, folder / "state", progress)
                if callback.stop_signal:
                    print(f"stopped at episode {callback.episodes}: state saved in {folder / 'state'}", flush=True)
                    return 128 + callback.stop_signal  # as a shell reports a process ended by the signal
            if not any(row["policy"] == "greedy" and int(row["episode"]) == target for row in rows):
                (folder / "policies").mkdir(exist_ok=True)
                torch.save(model.policy.state_dict(), folder / "policies" / f"episode-{target}.pt")
                row = measure(greedy_policy(model), args, "greedy", target, progress["train_seconds"])
                append_row(csv_path, row)
                rows.append(row)
            if callback.stop_signal:
                return 128 + callback.stop_signal  # as a shell reports a process ended by the signal
        if not any(row["policy"] == "random" for row in rows):
            append_row(csv_path, measure(random_policy(7, args.eval_seed, args.eval_envs), args, "random", 0, 0.0))
    finally:
        env.close()
        plot(args.results, folder / "learning.png", [args.name])  # what is measured so far, however the call ends
        names = sorted(path.parent.name for path in args.results.glob("*/learning.csv"))
        plot(args.results, args.results / "learning.png", names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
