"""Training, as bullet_kuka_train.py runs it: the agent `--agent` names, the lecture's loop in one process or the
loop over N environment workers, and a resumable state saved whatever stops the run.

    args = parse_training_args(["--preset", "pose", "--num-envs", "2", "--episodes", "3000"])
    run = train(args)    # a TrainingRun: episodes, seconds, transitions, how it stopped

The three schedules of a run are each decided in one place: epsilon and the learning cadence in `Trainer`,
the target network's sync in `DQNAgent.sync_target` (a refit's in `PoseAgent.end_episode`).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common import FrameStack, Observation, epsilon_by_episode, seed_everything
from grasping.checkpoints import check_writable_folder, load_checkpoint, resume_path, save_checkpoint
from grasping.cli import UsageError, WorkerError, resolve_device
from grasping.dqn import DQNAgent
from grasping.environment import display_problem, make_env
from grasping.flags import LEARNING_FLAGS
from grasping.pool import EnvPool, in_process, open_pool
from grasping.pose_agent import PoseAgent, agent_config
from grasping.rollouts import Rollouts
from grasping.runlog import RESUMED_COUNTS, RunLog

Agent = DQNAgent | PoseAgent

RESUME_KEYS = ("policy_net_state_dict", "optimizer_policy_net_state_dict", *RESUMED_COUNTS)
"""What a resumable state must hold (the replay memory is restored when it fits)."""


def make_agent(
    args: argparse.Namespace, observation: Observation, n_actions: int, device: torch.device, seed: int
) -> Agent:
    """The learner --agent names, with this run's flags."""
    if args.agent == "pose":
        return PoseAgent(
            observation,
            device,
            seed,
            args.lr,
            args.memory,
            args.batch_size,
            args.learning_starts,
            args.refit_every,
            args.refit_epochs,
            args.exploration,
            args.patch_scales,
            args.retry_failed,
        )
    return DQNAgent(args, observation, n_actions, device, seed)


def config_flags(config: dict[str, Any]) -> str:
    """A checkpoint's network configuration as the training flags that give it."""
    if config.get("agent") == "pose":
        colour = "--rgb" if config["rgb"] else "--no-rgb"
        height = " --height" if config.get("height", False) else ""
        scales = f" --patch-scales {config['patch_scales']}" if config.get("patch_scales", 1) != 1 else ""
        overhead = " --overhead" if config.get("overhead", False) else ""
        return f"--agent pose --image-size {config['image_size']} {colour}{height}{scales}{overhead}"
    switches = [
        f"--{'' if config[key] else 'no-'}{key.replace('_', '-')}"
        for key in ("timestep_input", "first_frame_input", "pose_input")
    ]
    return " ".join(
        (
            *switches,
            f"--image-size {config['image_size']}",
            "--rgb" if config["rgb"] else "--no-rgb",
            f"--network {config['network']}",
        )
    )


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The run's learning hyperparameters, as a resumable state records them."""
    return {dest: getattr(args, dest) for dest in LEARNING_FLAGS}


def check_hyperparameters(saved: dict[str, Any], args: argparse.Namespace, state_path: Path) -> None:
    """Refuse, in one line naming the flags, a resume that changes a learning hyperparameter, unless
    --change-hyperparameters says so. States saved before hyperparameters were recorded are not checked."""
    changed = [dest for dest, value in hyperparameters(args).items() if dest in saved and saved[dest] != value]
    if changed and not args.change_hyperparameters:
        flags = ", ".join(
            f"--{dest.replace('_', '-')} {getattr(args, dest)} (saved: {saved[dest]})" for dest in changed
        )
        raise UsageError(
            f"{flags}: {state_path} was saved with other learning hyperparameters; resume with the "
            "saved values, or pass --change-hyperparameters to go on with these"
        )


def resume_agent(agent: Agent, resumed: dict[str, Any], state_path: Path, args: argparse.Namespace) -> str:
    """Take over the networks, optimizer and replay memory of a resumable state saved by the same kind of run;
    returns what became of the memory, for the "Resuming" line."""
    saved_agent, saved_config = agent_config(resumed, state_path)
    if saved_agent != args.agent:
        raise UsageError(f"{state_path} was saved by a run with --agent {saved_agent}; resume it the same way")
    if saved_config != agent.config:
        raise UsageError(f"{state_path} was saved by a run with {config_flags(saved_config)}; resume it the same way")
    check_hyperparameters(resumed.get("hyperparameters", {}), args, state_path)
    agent.load(resumed, state_path)
    for group in agent.optimizer.param_groups:
        group["lr"] = args.lr
    if resumed.get("replay_memory") is None:
        return "replay memory starts empty: the state holds none"
    try:
        agent.memory.load_state_dict(resumed["replay_memory"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        return f"replay memory starts empty: {error}"
    return f"replay memory restored: {len(agent.memory)} {'episodes' if args.agent == 'pose' else 'transitions'}"


class Trainer:
    """The learner and the run's log as the loops drive them: act, store, learn as owed, end an episode.

    An episode means the same whatever the number of environments: epsilon follows the finished-episode
    count (the lecture's schedule), and the learner owes --updates-per-step learning steps per transition
    collected.
    """

    def __init__(self, agent: Agent, log: RunLog, args: argparse.Namespace, observation: Observation) -> None:
        self.agent, self.log, self.args, self.observation = agent, log, args, observation
        self.learn_calls = 0

    @property
    def finished(self) -> bool:
        return self.log.finished

    def epsilon(self) -> float:
        """The lecture's schedule at the number of finished episodes: linear from --eps-start, floored at --eps-end."""
        args = self.args
        return epsilon_by_episode(self.log.completed, args.eps_start, args.eps_end, args.eps_decay_episodes)

    def act(self, states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
        """Epsilon-greedy actions for these environments' states at these timesteps, one forward pass."""
        return self.agent.act(states, indices, timesteps, self.epsilon())

    def store(
        self, state: np.ndarray, action: int, next_state: np.ndarray | None, reward: float, stream: int = 0
    ) -> None:
        self.agent.store(state, action, next_state, reward, stream)
        self.log.transition()

    def before_reset(self, stream: int, call: Callable[..., Any]) -> None:
        """Environment `stream` is about to reset; `call(function, *args)` runs `function(env, *args)` where it lives
        (the pose agent's --retry-failed sets up its scene)."""
        self.agent.before_reset(stream, call)

    def learn_as_owed(self, pool: EnvPool | None = None) -> None:
        """The learning cadence: --updates-per-step learning steps per transition collected so far.

        With a `pool`, learning yields to a worker whose reply has come in, but never falls more than one step
        per worker behind; the agent does nothing until its memory holds enough.
        """
        slack = pool.num_envs if pool is not None else 0
        while (owed := int(self.log.transitions * self.args.updates_per_step + 1e-9) - self.learn_calls) > 0:
            if pool is not None and owed <= slack and pool.poll():
                return
            self.learn_calls += 1
            self.log.record(self.agent.learn())

    def end_episode(self, reward: float, length: int) -> None:
        """The lecture's end of an episode, logged and saved whole even if a stop signal arrives meanwhile; then
        the agent's (a target sync, or a refit, which a stop signal interrupts at once)."""
        i_episode = self.log.end_episode(reward, length, self.epsilon())
        self.log.record(self.agent.end_episode(i_episode))
        self.log.write_learning(i_episode)

    def lose_episode(self, stream: int) -> None:
        """Environment `stream` was lost mid-episode and replaced: drop the episode, count it, say so."""
        self.agent.drop_episode(stream)
        self.log.lost_episode(stream)


def run_lecture_loop(trainer: Trainer, env: Any, max_steps: int) -> None:
    """--num-envs 1: the lecture's loop in this process: act, step, store, learn, and so on to the episode's end."""
    observation = trainer.observation
    while not trainer.finished:
        frames = FrameStack()
        trainer.before_reset(0, lambda function, *args: function(env, *args))
        state = frames.reset(observation.preprocess(env.reset()))
        trainer.log.example_screen(state[-1])
        for t in range(1, max_steps + 1):
            action = trainer.act(state[None], [0], [t - 1])[0]
            obs, reward, done, _ = env.step(action)
            next_state = None if done else frames.push(observation.preprocess(obs))
            trainer.store(state, action, next_state, reward)
            trainer.learn_as_owed()
            if next_state is None:
                break
            state = next_state
        trainer.end_episode(reward, t)


def run_parallel_loop(trainer: Trainer, pool: EnvPool) -> None:
    """--num-envs N (or --backend ray): each worker steps as soon as it has its action; the learner works while
    they simulate. Replies are taken as they come; the workers waiting for an action get it from one batched
    forward pass."""

    def before_reset(index: int) -> None:
        trainer.before_reset(index, functools.partial(pool.call, index))

    rollouts = Rollouts(pool, trainer.observation, before_reset=before_reset)
    while not trainer.finished:
        for step in rollouts.steps():
            if step.lost:
                trainer.lose_episode(step.env)
                continue
            if step.state is None or step.action is None:  # an episode's first frame
                if step.next_state is not None:
                    trainer.log.example_screen(step.next_state[-1])
                continue
            trainer.store(step.state, step.action, step.next_state, step.reward, stream=step.env)
            if step.done:
                trainer.end_episode(step.reward, len(step.actions))
                if trainer.finished:
                    return
        rollouts.act(trainer.act)
        trainer.learn_as_owed(pool)


def starting_point(args: argparse.Namespace, device: torch.device) -> dict[str, Any] | None:
    """The resumable state to continue from (None: a new run); a new run never replaces a file silently. Sets
    the run's --logdir if not given, and checks that both folders can be written."""
    state_path = resume_path(args.checkpoint)
    resumed: dict[str, Any] | None = None
    if args.resume:
        resumed = load_checkpoint(state_path, device, RESUME_KEYS)
        if resumed["episode"] >= args.episodes:
            raise UsageError(
                f"--episodes {args.episodes}: {state_path} is already at episode "
                f"{resumed['episode']}; pass a larger --episodes to continue"
            )
    elif not args.overwrite:
        for existing in (args.checkpoint, state_path):
            if existing.exists():
                raise UsageError(
                    f"{existing} exists: pass --resume to continue that run, another --checkpoint, "
                    "or --overwrite to replace it"
                )
    if args.logdir is None:
        args.logdir = Path(resumed["logdir"]) if resumed else Path("runs") / f"kuka_dqn_{args.seed}_{int(time.time())}"
    check_writable_folder(args.checkpoint.parent, "--checkpoint")
    check_writable_folder(args.logdir, "--logdir")
    return resumed


@dataclass
class TrainingRun:
    """What a call of `train` did, for the lines printed at its end and for the benchmarks."""

    start_episode: int
    completed: int
    """Episodes finished in all, resumed ones included."""
    mean_reward: float
    solved: bool
    seconds: float
    """Seconds this process trained, once the environments were up."""
    elapsed_seconds: float
    """Seconds of training in all, resumed pieces included."""
    transitions: int
    gradient_steps: int
    state_path: Path
    stop: KeyboardInterrupt | None = None
    failure: WorkerError | None = None

    @property
    def episodes_per_second(self) -> float:
        return (self.completed - self.start_episode) / self.seconds


def train(args: argparse.Namespace) -> TrainingRun:
    """Train as the flags say, until --episodes, the solve condition, Ctrl-C, SIGTERM or a failed worker; the
    resumable state is saved in every case."""
    device = resolve_device(args.device)
    if args.render and (problem := display_problem()):
        raise UsageError(f"--render: {problem}; train without it and watch the logged episodes in TensorBoard")
    resumed = starting_point(args, device)
    state_path = resume_path(args.checkpoint)

    # Seeding: the environments draw objects from their process's global generators; the agent has
    # its own, so the scenes a seed produces do not depend on the agent's choices. A resumed run
    # reseeds with its episode so that it does not replay the first episodes' scenes.
    seed = args.seed + (resumed["episode"] if resumed else 0)
    seed_everything(seed)
    observation = Observation(args.image_size, args.rgb, args.height, args.overhead)
    env: Any  # pybullet's gym environment (untyped), or an EnvPool
    if in_process(args.backend, args.num_envs):
        env = make_env(
            False, args.max_steps, args.render, observation.camera_size, observation.height, observation.overhead
        )
        n_actions = env.action_space.n
    else:
        torch.set_num_threads(1)  # the other cores belong to the workers' physics
        env = open_pool(
            args.backend,
            args.num_envs,
            seed,
            False,
            args.max_steps,
            observation.camera_size,
            observation.height,
            observation.overhead,
            args.ray_address,
        )
        n_actions = env.n_actions
        if args.backend == "ray":
            tqdm.write(env.describe())
    try:
        agent = make_agent(args, observation, n_actions, device, seed)
        memory_note = resume_agent(agent, resumed, state_path, args) if resumed else ""
        log = RunLog(args, observation, seed, resumed, agent.networks, agent.greedy_policy)
    except BaseException:
        env.close()
        raise
    if resumed:
        tqdm.write(f"Resuming from {state_path} at episode {log.start_episode} ({memory_note})")
    return run_to_the_end(Trainer(agent, log, args, observation), env, args, state_path)


def run_to_the_end(trainer: Trainer, env: Any, args: argparse.Namespace, state_path: Path) -> TrainingRun:
    """Run the loop (the lecture's for one environment in this process); whatever stops it, close the
    environments and save the resumable state."""
    stop: KeyboardInterrupt | None = None
    failure: WorkerError | None = None
    log, agent = trainer.log, trainer.agent
    try:
        log.record(agent.catch_up())  # a refit that a stop interrupted
        if in_process(args.backend, args.num_envs):
            run_lecture_loop(trainer, env, args.max_steps)
        else:
            run_parallel_loop(trainer, env)
    except KeyboardInterrupt as signalled:  # Ctrl-C or SIGTERM
        stop = signalled
    except WorkerError as error:
        failure = error
    finally:
        seconds = log.seconds()
        env.close()
        counts = log.close()
        save_checkpoint(
            state_path,
            {
                **agent.networks(),
                **counts,
                **agent.resume_state(),
                "hyperparameters": hyperparameters(args),
                "replay_memory": agent.memory.state_dict(),
            },
        )
    return TrainingRun(
        log.start_episode,
        log.completed,
        log.mean_reward,
        log.solved,
        seconds,
        counts["elapsed_seconds"],
        log.transitions,
        agent.gradient_steps,
        state_path,
        stop,
        failure,
    )
