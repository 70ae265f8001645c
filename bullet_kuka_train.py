"""Train the lecture's DQN, or the pose agent, to grasp objects with a KUKA arm in pybullet from camera images.

    python bullet_kuka_train.py                 # the lecture's run, best model in policy_dqn.pt
    python bullet_kuka_train.py --num-envs 8    # the same algorithm, 8 environments in parallel
    python bullet_kuka_train.py --resume        # continue from policy_dqn.resume.pt
    python bullet_kuka_train.py --preset fast --num-envs 2    # the pose agent (grasping/pose_agent.py)

Saves the best policy (mean success over the last 100 episodes) to --checkpoint, keeps a
resumable state next to it, and logs to TensorBoard under --logdir.
"""
from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.optim as optim
from tqdm import tqdm

from common import (DQN, MIN_IMAGE_SIZE, NETWORKS, SCREEN_SIZE, DQNPolicy, FrameStack, Observation, ReplayMemory,
                    optimize_model, resolve_device, seed_everything, soft_update)
from grasping.checkpoints import (check_writable_folder, load_checkpoint, load_state, networks_state, resume_path,
                                  save_checkpoint)
from grasping.cli import (OneLineArgumentParser, Terminated, UsageError, WorkerError, add_backend_arguments,
                          check_backend_arguments, exit_status, non_negative_int, positive_float, positive_int,
                          probability, raise_terminated, report_errors, seed_int)
from grasping.environment import display_problem
from grasping.pose_agent import PoseAgent, agent_config
from grasping.rollouts import Policy, Rollouts
from grasping.runlog import BEST_MODEL_AFTER_EPISODE, RESUMED_COUNTS, SOLVE_AFTER_EPISODE, RunLog
from grasping.workers import EnvPool, open_environments

RESUME_KEYS = ("policy_net_state_dict", "optimizer_policy_net_state_dict", *RESUMED_COUNTS)
"""What a resumable state must hold (the replay memory is restored when it fits)."""


PRESETS: dict[str, dict[str, Any]] = {
    "lecture": {},
    "fast": dict(agent="pose", image_size=96, rgb=True, lr=1e-3, eps_start=1.0, eps_decay_last_frame=1000,
                 learning_starts=100, refit_every=200),
    "fast-dqn": dict(double_dqn=True, n_step=3, gamma=0.9, target_update_steps=500, augment=True, eps_start=1.0,
                 eps_end=0.05, eps_decay_last_frame=500, memory=30000, learning_starts=1000, updates_per_step=4.0),
}
"""Defaults that --preset puts in place of the lecture's; flags given on the command line still win."""


DQN_ONLY = ("gamma", "target_update", "target_update_steps", "tau", "double_dqn", "n_step", "augment",
            "timestep_input", "first_frame_input", "pose_input", "network")
"""Flags of the lecture's DQN that the pose agent has no use for: given with --agent pose, they are refused."""
POSE_ONLY = ("refit_every", "refit_epochs")
"""Flags of the pose agent, refused with --agent dqn."""


def preset_flags(name: str) -> str:
    """A preset as the command-line flags it stands for."""
    flags = []
    for dest, value in PRESETS[name].items():
        flag = "--" + dest.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(flags)


def image_side(text: str) -> int:
    """argparse type: an image side in pixels that the lecture's convolutions can take, >= MIN_IMAGE_SIZE."""
    value = int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_IMAGE_SIZE} pixels, got {text}")
    return value


def add_algorithm_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent and the lecture's DQN hyperparameters."""
    parser.add_argument("--preset", choices=tuple(PRESETS), default="lecture",
                        help="defaults to start from: the lecture's; 'fast', the pose agent that learns fastest, "
                             f"which stands for {preset_flags('fast')}; or 'fast-dqn', the fastest-learning DQN "
                             f"measured, {preset_flags('fast-dqn')}; flags given here override them")
    parser.add_argument("--agent", choices=("dqn", "pose"), default="dqn",
                        help="the lecture's DQN, or the pose agent (grasping/pose_agent.py), which scores the final poses the "
                             "gripper can still reach on the episode's first frame and heads for the best; "
                             "the checkpoint records it")
    parser.add_argument("--episodes", type=positive_int, default=10**7,
                        help="train until this many episodes in all, resumed ones included (lecture: 10**7)")
    parser.add_argument("--max-steps", type=positive_int, default=20,
                        help="actions per episode before the environment ends it (maxSteps)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="transitions per gradient step")
    parser.add_argument("--gamma", type=probability, default=0.99, help="discount factor")
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--memory", type=positive_int, default=10000, help="replay memory capacity: transitions (dqn) or finished episodes (pose)")
    parser.add_argument("--target-update", type=positive_int, default=1000,
                        help="copy the policy network into the target network every this many episodes")
    sync = parser.add_mutually_exclusive_group()
    sync.add_argument("--target-update-steps", type=positive_int, default=None,
                      help="copy the target network every this many gradient steps of the run, instead of by episodes")
    sync.add_argument("--tau", type=probability, default=None,
                      help="Polyak averaging after every gradient step, target = tau * policy + (1 - tau) * target, "
                           "instead of copies by episodes")
    parser.add_argument("--double-dqn", action=argparse.BooleanOptionalAction, default=False,
                        help="Double DQN target: the policy network picks a', the target network values it")
    parser.add_argument("--n-step", type=positive_int, default=1,
                        help="bootstrap n steps on from the discounted rewards in between (lecture: 1); "
                             "n >= --max-steps gives Monte Carlo returns")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                        help="random-shift augmentation of sampled states: pad 4 pixels, crop back at random")


def add_input_and_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """What the network sees, exploration, and when and how much it learns."""
    parser.add_argument("--timestep-input", action=argparse.BooleanOptionalAction, default=False,
                        help="feed the episode's timestep to the network beside the frames (the slides' state); "
                             "the checkpoint records it, and the eval script rebuilds the network from the file")
    parser.add_argument("--first-frame-input", action=argparse.BooleanOptionalAction, default=False,
                        help="give the network the episode's first frame ahead of the stack: the scene before the "
                             "arm covers it (what the pose agent scores); the checkpoint records it")
    parser.add_argument("--pose-input", action=argparse.BooleanOptionalAction, default=False,
                        help="feed the arm's commanded pose (x, y, gripper angle), which follows from the actions "
                             "taken, to the network beside the frames; the checkpoint records it")
    parser.add_argument("--image-size", type=image_side, default=SCREEN_SIZE,
                        help="side in pixels of the square frames the network sees (lecture: 40, resized from the "
                             "48x48 camera); above 48 the camera renders at this size; the checkpoint records it")
    parser.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=False,
                        help="keep the camera's colour instead of the lecture's grayscale: 3 channels per frame; "
                             "the checkpoint records it")
    parser.add_argument("--network", choices=tuple(NETWORKS), default=DQN.network,
                        help="the Q-network's convolutions: the lecture's, or 'fine' ones (strides 2, 1, 2, 2) that "
                             "keep a 6x6 grid of positions at 48x48; the checkpoint records it")
    parser.add_argument("--learning-starts", type=non_negative_int, default=0,
                        help="no gradient step before the memory holds this many transitions, or episodes with --agent "
                             "pose (lecture: one batch)")
    parser.add_argument("--eps-start", type=probability, default=0.9,
                        help="epsilon at episode 0: the chance of a random action, or with --agent pose of an "
                             "episode that heads for a random final pose")
    parser.add_argument("--eps-end", type=probability, default=0.1, help="lowest epsilon")
    parser.add_argument("--eps-decay-last-frame", type=positive_int, default=10**4,
                        help="epsilon falls by 1 over this many episodes: eps = max(end, start - episode / this)")
    parser.add_argument("--solve-score", type=float, default=50.0,
                        help="stop once the mean success over the last 100 episodes (in %%) exceeds this, "
                             f"from episode {SOLVE_AFTER_EPISODE} on")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the networks run; auto picks CUDA when a GPU is usable")
    parser.add_argument("--num-envs", type=positive_int, default=1,
                        help="environments, each in its own worker process; 1 runs the lecture's loop in this process")
    add_backend_arguments(parser)
    parser.add_argument("--updates-per-step", type=positive_float, default=1.0,
                        help="gradient steps per collected transition (lecture: 1)")
    parser.add_argument("--refit-every", type=non_negative_int, default=0,
                        help="--agent pose: after every this many episodes, retrain the grasp network from fresh "
                             "weights on the whole memory instead of learning online; 0: online, --updates-per-step "
                             "gradient steps per transition")
    parser.add_argument("--refit-epochs", type=positive_int, default=10,
                        help="--agent pose with --refit-every: passes over the memory in each refit")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Seeding, files, logging, and whether to resume."""
    parser.add_argument("--seed", type=seed_int, default=1, help="seed of the environments, the agent and torch")
    parser.add_argument("--checkpoint", type=Path, default=Path("policy_dqn.pt"),
                        help="best model file; the resumable state goes beside it as NAME.resume.pt")
    parser.add_argument("--logdir", type=Path, default=None,
                        help="TensorBoard folder (default: runs/kuka_dqn_SEED_TIME, or the resumed run's)")
    parser.add_argument("--clip-every", type=non_negative_int, default=500,
                        help="every this many episodes, log to TensorBoard an image strip of one greedy episode "
                             "on test objects, played in a separate process; 0: never")
    parser.add_argument("--render", action="store_true",
                        help="watch training in the PyBullet GUI (needs a display and --num-envs 1)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the resumable state beside --checkpoint instead of starting over")
    start.add_argument("--overwrite", action="store_true",
                       help="start over even if --checkpoint or its resumable state exists, replacing them")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Train the lecture's DQN on KukaDiverseObjectEnv (pybullet).")
    add_algorithm_arguments(parser)
    add_input_and_schedule_arguments(parser)
    add_run_arguments(parser)
    defaults = {dest: parser.get_default(dest) for dest in (*DQN_ONLY, *POSE_ONLY, "updates_per_step")}
    parser.set_defaults(**PRESETS[parser.parse_known_args(argv)[0].preset])
    args = parser.parse_args(argv)
    check_backend_arguments(parser, args)
    for dest in DQN_ONLY if args.agent == "pose" else POSE_ONLY:
        if getattr(args, dest) != defaults[dest]:
            parser.error(f"argument --{dest.replace('_', '-')}: applies to --agent "
                         f"{'dqn' if args.agent == 'pose' else 'pose'} only")
    if args.refit_every and args.updates_per_step != defaults["updates_per_step"]:
        parser.error("argument --updates-per-step: applies to online learning; --refit-every retrains instead")
    if not args.refit_every and args.refit_epochs != defaults["refit_epochs"]:
        parser.error("argument --refit-epochs: applies with --refit-every only")
    if args.tau is not None:  # the two are exclusive on the command line; a preset's step sync yields to --tau
        args.target_update_steps = None
    if args.render and args.num_envs > 1:
        parser.error("argument --render: shows the environment of this process; use --num-envs 1")
    if args.memory < max(args.batch_size, args.num_envs):
        parser.error(f"argument --memory: must hold at least one batch ({args.batch_size}) and one transition "
                     f"per environment ({args.num_envs}), got {args.memory}")
    return args


def config_flags(config: dict[str, Any]) -> str:
    """A checkpoint's network configuration as the training flags that give it."""
    if config.get("agent") == "pose":
        return f"--agent pose --image-size {config['image_size']} {'--rgb' if config['rgb'] else '--no-rgb'}"
    switches = [f"--{'' if config[key] else 'no-'}{key.replace('_', '-')}"
                for key in ("timestep_input", "first_frame_input", "pose_input")]
    return " ".join((*switches, f"--image-size {config['image_size']}", "--rgb" if config["rgb"] else "--no-rgb",
                     f"--network {config['network']}"))




class DQNAgent:
    """The lecture's learner: policy and target networks, Adam and the replay memory of transitions. It acts,
    stores, learns and keeps its target network in step; the pose agent (grasping.pose_agent.PoseAgent) has
    the same methods."""

    def __init__(self, args: argparse.Namespace, observation: Observation, n_actions: int, device: torch.device,
                 seed: int) -> None:
        self.args = args
        self.n_actions = n_actions
        self.rng = random.Random(seed)
        network = NETWORKS[args.network]
        inputs = (args.timestep_input, args.first_frame_input, args.pose_input)
        self.policy_net = network.for_observation(observation, n_actions, *inputs).to(device)
        self.target_net = network.for_observation(observation, n_actions, *inputs).to(device)
        self.target_net.load_state_dict(self.policy_net.state_dict())
        self.target_net.eval()
        self.optimizer = optim.Adam(self.policy_net.parameters(), lr=args.lr)
        self.memory = ReplayMemory(args.memory, device, num_streams=args.num_envs, seed=seed,
                                   frame_shape=observation.frame_shape, first_frame=args.first_frame_input,
                                   poses=args.pose_input, max_episode_steps=args.max_steps)
        self.policy = DQNPolicy(self.policy_net, n_actions, self.rng)
        self.gradient_steps = 0

    @property
    def config(self) -> dict[str, Any]:
        return self.policy_net.config

    def act(self, states: np.ndarray, indices: list[int], timesteps: list[int], epsilon: float) -> list[int]:
        return self.policy(states, indices, timesteps, epsilon)

    def greedy_policy(self) -> Policy:
        return DQNPolicy(self.policy_net, self.n_actions)

    def store(self, state: np.ndarray, action: int, next_state: Optional[np.ndarray], reward: float,
              stream: int = 0) -> None:
        self.memory.push(state, action, next_state, reward, stream)

    def drop_episode(self, stream: int) -> None:
        """The environment of `stream` was lost mid-episode: its transitions so far leave the memory."""
        self.memory.drop_unfinished(stream)

    def learn(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """One call of the lecture's optimize_model; nothing until the memory holds a batch and --learning-starts
        transitions."""
        args = self.args
        if len(self.memory) < args.learning_starts:
            return None
        result = optimize_model(self.policy_net, self.target_net, self.optimizer, self.memory, args.batch_size,
                                args.gamma, n_step=args.n_step, double_dqn=args.double_dqn, augment=args.augment)
        if result is not None:
            self.gradient_steps += 1
            self.update_target()
        return result

    def episode_done(self, i_episode: int) -> None:
        """The end of episode `i_episode`: the lecture's target sync by episodes; it learns nothing itself."""
        self.update_target(i_episode)

    def update_target(self, i_episode: Optional[int] = None) -> None:
        """The target network follows the policy network, after a gradient step (`i_episode` None) or an episode:
        with --tau by Polyak averaging after every step; with --target-update-steps a copy every that many
        steps; otherwise the lecture's copy every --target-update episodes."""
        args = self.args
        if args.tau is not None:
            if i_episode is None:
                soft_update(self.target_net, self.policy_net, args.tau)
        elif args.target_update_steps is not None:
            if i_episode is None and self.gradient_steps % args.target_update_steps == 0:
                self.target_net.load_state_dict(self.policy_net.state_dict())
        elif i_episode is not None and i_episode % args.target_update == 0:
            self.target_net.load_state_dict(self.policy_net.state_dict())

    def networks(self) -> dict[str, Any]:
        return networks_state(self.policy_net, self.target_net, self.optimizer)

    def load(self, checkpoint: dict[str, Any], path: Path) -> None:
        load_state(self.policy_net, checkpoint, "policy_net_state_dict", path)
        load_state(self.target_net, checkpoint, "target_net_state_dict", path)
        load_state(self.optimizer, checkpoint, "optimizer_policy_net_state_dict", path)


def make_agent(args: argparse.Namespace, observation: Observation, n_actions: int, device: torch.device,
               seed: int) -> DQNAgent | PoseAgent:
    """The learner --agent names, with this run's flags."""
    if args.agent == "pose":
        return PoseAgent(observation.size, observation.rgb, device, seed, args.lr, args.memory, args.batch_size,
                         args.learning_starts, args.refit_every, args.refit_epochs)
    return DQNAgent(args, observation, n_actions, device, seed)


def resume_agent(agent: DQNAgent | PoseAgent, resumed: dict[str, Any], state_path: Path,
                 args: argparse.Namespace) -> str:
    """Take over the networks, optimizer and replay memory of a resumable state saved by the same kind of run;
    returns what became of the memory, for the "Resuming" line."""
    saved_agent, saved_config = agent_config(resumed, state_path)
    if saved_agent != args.agent:
        raise UsageError(f"{state_path} was saved by a run with --agent {saved_agent}; resume it the same way")
    if saved_config != agent.config:
        raise UsageError(f"{state_path} was saved by a run with {config_flags(saved_config)}; resume it the same way")
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
    count, and the learner owes --updates-per-step learning steps per transition collected.
    """

    def __init__(self, agent: DQNAgent | PoseAgent, log: RunLog, observation: Observation,
                 updates_per_step: float) -> None:
        self.agent, self.log, self.observation, self.updates_per_step = agent, log, observation, updates_per_step
        self.learn_calls = 0

    @property
    def finished(self) -> bool:
        return self.log.finished

    def act(self, states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
        """Epsilon-greedy actions for these environments' states at these timesteps, one forward pass."""
        return self.agent.act(states, indices, timesteps, self.log.epsilon())

    def store(self, state: np.ndarray, action: int, next_state: Optional[np.ndarray], reward: float,
              stream: int = 0) -> None:
        self.agent.store(state, action, next_state, reward, stream)
        self.log.transition()

    def owed(self) -> int:
        """Learning steps due for the transitions collected so far."""
        return int(self.log.transitions * self.updates_per_step + 1e-9) - self.learn_calls

    def learn(self) -> None:
        """One learning step of the agent; it does nothing until its memory holds enough."""
        self.learn_calls += 1
        self.log.record(self.agent.learn())

    def end_episode(self, reward: float, length: int) -> None:
        self.log.end_episode(reward, length)

    def lose_episode(self, stream: int) -> None:
        """Environment `stream` was lost mid-episode and replaced: drop the episode, count it, say so."""
        self.agent.drop_episode(stream)
        self.log.lost_episode(stream)


def run_lecture_loop(trainer: Trainer, env: Any, max_steps: int) -> None:
    """--num-envs 1: the lecture's loop in this process: act, step, store, learn, and so on to the episode's end."""
    while not trainer.finished:
        frames = FrameStack()
        state = frames.reset(trainer.observation.preprocess(env.reset()))
        trainer.log.example_screen(state[-1])
        for t in range(1, max_steps + 1):
            action = trainer.act(state[None], [0], [t - 1])[0]
            obs, reward, done, _ = env.step(action)
            next_state = None if done else frames.push(trainer.observation.preprocess(obs))
            trainer.store(state, action, next_state, reward)
            state = next_state
            while trainer.owed() > 0:
                trainer.learn()
            if done:
                break
        trainer.end_episode(reward, t)


def run_parallel_loop(trainer: Trainer, pool: EnvPool) -> None:
    """--num-envs N (or --backend ray): each worker steps as soon as it has its action; the learner works while
    they simulate. `pool` is an EnvPool or a RayEnvPool, which has its interface.

    Replies are taken as they come; the workers waiting for an action get it from one batched
    forward pass. Learning yields to the workers, but never falls more than one gradient step
    per worker behind --updates-per-step.
    """
    rollouts = Rollouts(pool)
    while not trainer.finished:
        for step in rollouts.steps():
            if step.lost:
                trainer.lose_episode(step.env)
                continue
            if step.action is None:  # an episode's first frame
                trainer.log.example_screen(step.frame)
                continue
            trainer.store(step.state, step.action, step.next_state, step.reward, stream=step.env)
            if step.done:
                trainer.end_episode(step.reward, len(step.actions))
                if trainer.finished:
                    return
        rollouts.act(trainer.act)
        while (owed := trainer.owed()) > 0 and (owed > pool.num_envs or not pool.poll()):
            trainer.learn()


def starting_point(args: argparse.Namespace, device: torch.device) -> Optional[dict[str, Any]]:
    """The resumable state to continue from (None: a new run); a new run never replaces a file silently. Sets
    the run's --logdir if not given, and checks that both folders can be written."""
    state_path = resume_path(args.checkpoint)
    resumed: Optional[dict[str, Any]] = None
    if args.resume:
        resumed = load_checkpoint(state_path, device, RESUME_KEYS)
        if resumed["episode"] >= args.episodes:
            raise UsageError(f"--episodes {args.episodes}: {state_path} is already at episode "
                             f"{resumed['episode']}; pass a larger --episodes to continue")
    elif not args.overwrite:
        for existing in (args.checkpoint, state_path):
            if existing.exists():
                raise UsageError(f"{existing} exists: pass --resume to continue that run, another --checkpoint, "
                                 "or --overwrite to replace it")
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
    stop: Optional[KeyboardInterrupt] = None
    failure: Optional[WorkerError] = None

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
    observation = Observation(args.image_size, args.rgb)
    if args.num_envs > 1 or args.backend != "local":
        torch.set_num_threads(1)  # the other cores belong to the workers' physics
    env, n_actions, in_process = open_environments(args.backend, args.num_envs, seed, False, args.max_steps,
                                                   observation, args.ray_address, renders=args.render)
    if args.backend == "ray":
        tqdm.write(env.describe())
    try:
        agent = make_agent(args, observation, n_actions, device, seed)
        memory_note = resume_agent(agent, resumed, state_path, args) if resumed else ""
        log = RunLog(args, observation, seed, resumed, agent.networks, agent.episode_done, agent.greedy_policy)
    except BaseException:
        env.close()
        raise
    if resumed:
        tqdm.write(f"Resuming from {state_path} at episode {log.start_episode} ({memory_note})")
    return run_to_the_end(Trainer(agent, log, observation, args.updates_per_step), env, in_process, args, state_path)


def run_to_the_end(trainer: Trainer, env: Any, in_process: bool, args: argparse.Namespace,
                   state_path: Path) -> TrainingRun:
    """Run the loop (the lecture's for one environment in this process); whatever stops it, close the
    environments and save the resumable state."""
    stop: Optional[KeyboardInterrupt] = None
    failure: Optional[WorkerError] = None
    try:
        if in_process:
            run_lecture_loop(trainer, env, args.max_steps)
        else:
            run_parallel_loop(trainer, env)
    except KeyboardInterrupt as signalled:  # Ctrl-C or SIGTERM
        stop = signalled
    except WorkerError as error:
        failure = error
    finally:
        log, agent = trainer.log, trainer.agent
        seconds = log.seconds()
        env.close()
        counts = log.close()
        save_checkpoint(state_path, {**agent.networks(), **counts, "replay_memory": agent.memory.state_dict()})
    return TrainingRun(log.start_episode, log.completed, log.mean_reward, log.solved, seconds,
                       counts["elapsed_seconds"], log.transitions, agent.gradient_steps, state_path, stop, failure)


def report(run: TrainingRun, args: argparse.Namespace) -> int:
    """The lecture's closing lines and the throughput; returns the exit status."""
    if run.solved:
        print("Environment solved in {:d} episodes!\tAverage Score: {:.2f}".format(run.completed, run.mean_reward))
        print("Average Score: {:.2f}".format(run.mean_reward))
    elif run.stop is not None:
        how = "Terminated" if isinstance(run.stop, Terminated) else "Interrupted"
        print(f"{how} after {run.completed} episodes: state saved to {run.state_path}; continue with --resume")
    if not args.checkpoint.exists():
        print(f"No best model saved yet (that starts after episode {BEST_MODEL_AFTER_EPISODE}); "
              f"the last policy is in {run.state_path}")
    print("Elapsed time: {}".format(timedelta(seconds=run.elapsed_seconds)))
    print(f"Throughput: {run.episodes_per_second:.3f} episodes/s, "
          f"{run.transitions / run.seconds:.2f} env steps/s, "
          f"{run.gradient_steps / run.seconds:.2f} gradient steps/s "
          f"with {args.num_envs} environment{'s' if args.num_envs > 1 else ''}")
    if run.failure is not None:
        print(f"error: {run.failure}; the run's state is saved in {run.state_path}: continue with --resume",
              file=sys.stderr)
        return 1
    return exit_status(run.stop) if run.stop is not None else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return report_errors(lambda: report(train(args), args))
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
