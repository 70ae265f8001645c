"""Train the lecture's DQN, or the pose agent, to grasp objects with a KUKA arm in pybullet from camera images.

    python bullet_kuka_train.py                 # the lecture's run, best model in policy_dqn.pt
    python bullet_kuka_train.py --num-envs 8    # the same algorithm, 8 environments in parallel
    python bullet_kuka_train.py --resume        # continue from policy_dqn.resume.pt
    python bullet_kuka_train.py --preset fast --num-envs 2    # the pose agent (pose_agent.py)

Saves the best policy (mean success over the last 100 episodes) to --checkpoint, keeps a
resumable state next to it, and logs to TensorBoard under --logdir.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
import time
import timeit
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.optim as optim
from tensorboardX import SummaryWriter
from tqdm import tqdm

from common import (
    DQN,
    NETWORKS,
    DQNPolicy,
    SCREEN_SIZE,
    STOP_SIGNALS,
    EnvPool,
    EpisodeRecorder,
    FrameStack,
    Observation,
    OneLineArgumentParser,
    ReplayMemory,
    UsageError,
    WorkerError,
    check_writable_folder,
    display_problem,
    epsilon_by_episode,
    image_side,
    load_checkpoint,
    load_state,
    make_env,
    networks_state,
    non_negative_int,
    optimize_model,
    positive_float,
    positive_int,
    probability,
    report_errors,
    resolve_device,
    resume_path,
    save_checkpoint,
    seed_everything,
    seed_int,
    soft_update,
    worker_seed,
)
from pose_agent import PoseAgent, agent_config

BEST_MODEL_AFTER_EPISODE = 100
"""The best model is saved only once the mean covers more than this many episodes (lecture)."""
SOLVE_AFTER_EPISODE = 200
"""The solve condition is checked from this episode on (lecture)."""
RESUME_KEYS = ("policy_net_state_dict", "optimizer_policy_net_state_dict",
    "episode", "total_rewards", "best_mean_reward", "ten_rewards", "global_step", "logdir", "elapsed_seconds")


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


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = OneLineArgumentParser(description="Train the lecture's DQN on KukaDiverseObjectEnv (pybullet).")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="lecture",
                        help="defaults to start from: the lecture's; 'fast', the pose agent that learns fastest, "
                             f"which stands for {preset_flags('fast')}; or 'fast-dqn', the fastest-learning DQN "
                             f"measured, {preset_flags('fast-dqn')}; flags given here override them")
    parser.add_argument("--agent", choices=("dqn", "pose"), default="dqn",
                        help="the lecture's DQN, or the pose agent (pose_agent.py), which scores the final poses the "
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
    parser.add_argument("--updates-per-step", type=positive_float, default=1.0,
                        help="gradient steps per collected transition (lecture: 1)")
    parser.add_argument("--refit-every", type=non_negative_int, default=0,
                        help="--agent pose: after every this many episodes, retrain the grasp network from fresh "
                             "weights on the whole memory instead of learning online; 0: online, --updates-per-step "
                             "gradient steps per transition")
    parser.add_argument("--refit-epochs", type=positive_int, default=10,
                        help="--agent pose with --refit-every: passes over the memory in each refit")
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
    defaults = {dest: parser.get_default(dest) for dest in (*DQN_ONLY, *POSE_ONLY, "updates_per_step")}
    parser.set_defaults(**PRESETS[parser.parse_known_args(argv)[0].preset])
    args = parser.parse_args(argv)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler's time limit): the run stops and saves its state as on Ctrl-C."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block ends, so that an episode is counted, logged and saved whole."""
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:  # started with SIGINT ignored (nohup, a background job): keep it so
            signal.signal(signum, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            raise Terminated if received[0] == signal.SIGTERM else KeyboardInterrupt


class DQNAgent:
    """The lecture's learner: policy and target networks, Adam and the replay memory of transitions.

    `Trainer` drives it, or the pose agent (pose_agent.PoseAgent) through the same methods.
    """

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

    def greedy_policy(self) -> Callable[[np.ndarray, list[int], list[int]], list[int]]:
        return DQNPolicy(self.policy_net, self.n_actions)

    def store(self, state: np.ndarray, action: int, next_state: Optional[np.ndarray], reward: float,
              stream: int = 0) -> None:
        self.memory.push(state, action, next_state, reward, stream)

    def learn(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """One call of the lecture's optimize_model and the target sync by steps; nothing until the memory holds a
        batch and --learning-starts transitions."""
        args = self.args
        if len(self.memory) < args.learning_starts:
            return None
        result = optimize_model(self.policy_net, self.target_net, self.optimizer, self.memory, args.batch_size,
                                args.gamma, n_step=args.n_step, double_dqn=args.double_dqn, augment=args.augment)
        if result is None:
            return None
        self.gradient_steps += 1
        if args.tau is not None:
            soft_update(self.target_net, self.policy_net, args.tau)
        elif args.target_update_steps is not None and self.gradient_steps % args.target_update_steps == 0:
            self.target_net.load_state_dict(self.policy_net.state_dict())
        return result

    def episode_done(self, i_episode: int) -> None:
        """The lecture's target sync, every --target-update episodes; it learns nothing itself."""
        if i_episode % self.args.target_update == 0 and self.args.tau is None and self.args.target_update_steps is None:
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


class Trainer:
    """The lecture's bookkeeping around a learner (--agent): what happens as episodes end, whichever agent learns.

    Both loops below drive it, so an episode means the same whatever the number of environments:
    epsilon follows the finished-episode count, and each finished episode is logged, may save the
    best model, may sync the target network and may meet the solve condition, as in the lecture.
    """

    def __init__(self, args: argparse.Namespace, observation: Observation, n_actions: int, device: torch.device,
                 seed: int, resumed: Optional[dict[str, Any]], state_path: Path) -> None:
        self.args = args
        self.clip_seed = worker_seed(seed, args.num_envs)  # not one of the training workers' seeds
        self.clip_pool: Optional[EnvPool] = None  # started for the first clip
        self.example_logged = False
        self.observation = observation
        self.agent = make_agent(args, observation, n_actions, device, seed)

        self.completed = 0
        self.total_rewards: list[float] = []
        self.best_mean_reward: Optional[float] = None
        self.ten_rewards = 0.0
        self.global_step = 0
        self.earlier_seconds = 0.0
        if resumed:
            saved_agent, saved_config = agent_config(resumed, state_path)
            if saved_agent != args.agent:
                raise UsageError(f"{state_path} was saved by a run with --agent {saved_agent}; resume it the same way")
            if saved_config != self.agent.config:
                raise UsageError(f"{state_path} was saved by a run with {config_flags(saved_config)}; "
                                 "resume it the same way")
            self.agent.load(resumed, state_path)
            for group in self.agent.optimizer.param_groups:
                group["lr"] = args.lr
            self.completed = resumed["episode"]
            self.total_rewards = list(resumed["total_rewards"])
            self.best_mean_reward = resumed["best_mean_reward"]
            self.ten_rewards = resumed["ten_rewards"]
            self.global_step = resumed["global_step"]
            self.earlier_seconds = resumed["elapsed_seconds"]
            self.memory_note = self._restore_memory(resumed.get("replay_memory"))
        self.start_episode = self.completed
        self.mean_reward = float(np.mean(self.total_rewards[-100:]) * 100) if self.total_rewards else 0.0
        self.solved = False

        # This run's counts, for throughput and for the gradient steps owed to the learner.
        self.transitions = 0
        self.optimize_calls = 0
        self.losses: list[torch.Tensor] = []
        self.q_values: list[torch.Tensor] = []

        self.writer = SummaryWriter(str(args.logdir))
        self.writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items()),
        )
        self.progress = tqdm(total=args.episodes, initial=self.completed, unit="ep", disable=None, dynamic_ncols=True)
        self.start_time = timeit.default_timer()

    def _restore_memory(self, saved: Optional[dict[str, Any]]) -> str:
        """Refill the replay memory from a resumed state, when it fits this run's --memory and --num-envs."""
        if saved is None:
            return "replay memory starts empty: the state holds none"
        try:
            self.agent.memory.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            return f"replay memory starts empty: {error}"
        unit = "episodes" if self.args.agent == "pose" else "transitions"
        return f"replay memory restored: {len(self.agent.memory)} {unit}"

    def log_example_screen(self, frame: np.ndarray) -> None:
        """The lecture's "Example extracted screen": the first frame the network sees in this run, logged once."""
        if not self.example_logged:
            image = frame.reshape(-1, *frame.shape[-2:])  # a grayscale frame gets its one channel
            self.writer.add_image("example_extracted_screen", image, self.completed, dataformats="CHW")
            self.example_logged = True

    def log_greedy_episode(self) -> None:
        """An image strip of one greedy episode on test objects, played by a worker of its own.

        A separate process keeps the training environments' scenes and random draws as they were.
        """
        if self.clip_pool is None:
            self.clip_pool = EnvPool(1, self.clip_seed, is_test=True, max_steps=self.args.max_steps,
                                     observation=self.observation)
        recorder = record_greedy_episode(self.clip_pool, self.agent.greedy_policy())
        self.writer.add_image("greedy_episode_test_objects", recorder.strip(), self.completed - 1, dataformats="HWC")

    @property
    def finished(self) -> bool:
        return self.solved or self.completed >= self.args.episodes

    def epsilon(self) -> float:
        return epsilon_by_episode(self.completed, self.args.eps_start, self.args.eps_end, self.args.eps_decay_last_frame)

    def act(self, states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
        """Epsilon-greedy actions for a batch of states of these environments at these timesteps of their
        episodes, one forward pass."""
        return self.agent.act(states, indices, timesteps, self.epsilon())

    def store(self, state: np.ndarray, action: int, next_state: Optional[np.ndarray], reward: float,
              stream: int = 0) -> None:
        self.agent.store(state, action, next_state, reward, stream)
        self.transitions += 1
        self.global_step += 1

    def owed(self) -> int:
        """Learning steps due for the transitions collected so far (--updates-per-step each)."""
        return int(self.transitions * self.args.updates_per_step + 1e-9) - self.optimize_calls

    def learn(self) -> None:
        """One learning step of the agent; it does nothing until its memory holds enough."""
        self.optimize_calls += 1
        self.record(self.agent.learn())

    def record(self, result: Optional[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """A learning step's (loss, mean Q), logged when the episode in progress ends."""
        if result is not None:
            self.losses.append(result[0])
            self.q_values.append(result[1])

    def seconds(self) -> float:
        return timeit.default_timer() - self.start_time

    def end_episode(self, reward: float, length: int) -> None:
        """The lecture's end of an episode: log it, save the best model, sync the target, check for solved."""
        with stop_signals_deferred():
            self._end_episode(reward, length)
        if self.args.clip_every and self.completed % self.args.clip_every == 0:
            self.log_greedy_episode()

    def _end_episode(self, reward: float, length: int) -> None:
        args, writer, i_episode = self.args, self.writer, self.completed
        epsilon = self.epsilon()
        self.ten_rewards += reward
        self.total_rewards.append(float(reward))
        self.completed += 1
        self.mean_reward = mean_reward = float(np.mean(self.total_rewards[-100:]) * 100)
        steps_per_second = self.transitions / self.seconds()
        writer.add_scalar("epsilon", epsilon, i_episode)
        writer.add_scalar("success_rate_last_100", mean_reward, i_episode)
        writer.add_scalar("episode_length", length, i_episode)
        writer.add_scalar("steps_per_second", steps_per_second, i_episode)

        if (self.best_mean_reward is None or self.best_mean_reward < mean_reward) \
                and i_episode > BEST_MODEL_AFTER_EPISODE:
            save_checkpoint(args.checkpoint, {**self.networks(), "episode": i_episode, "mean_reward": mean_reward})
            if self.best_mean_reward is not None:
                tqdm.write("Best mean reward updated %.1f -> %.1f, model saved" % (self.best_mean_reward, mean_reward))
            self.best_mean_reward = mean_reward

        if (i_episode + 1) % 10 == 0:
            writer.add_scalar("ten episodes average rewards", self.ten_rewards / 10.0, i_episode)
            self.ten_rewards = 0.0
        self.record(self.agent.episode_done(i_episode))  # a refit's loss is logged with the episode it follows
        if self.losses:
            writer.add_scalar("loss", torch.stack(self.losses).mean().item(), i_episode)
            writer.add_scalar("mean_q", torch.stack(self.q_values).mean().item(), i_episode)
            self.losses, self.q_values = [], []

        self.progress.update(1)
        self.progress.set_postfix(eps=f"{epsilon:.3f}", success=f"{mean_reward:.1f}%", sps=f"{steps_per_second:.1f}")
        if i_episode >= SOLVE_AFTER_EPISODE and mean_reward > args.solve_score:
            self.solved = True

    def networks(self) -> dict[str, Any]:
        return self.agent.networks()

    def close(self) -> dict[str, Any]:
        """Stop the clip worker, flush the logs and return the resumable state."""
        if self.clip_pool is not None:
            self.clip_pool.close()
        self.progress.close()
        self.writer.close()
        return {
            **self.networks(),
            "episode": self.completed,
            "total_rewards": self.total_rewards[-100:],
            "best_mean_reward": self.best_mean_reward,
            "ten_rewards": self.ten_rewards,
            "global_step": self.global_step,
            "logdir": str(self.args.logdir),
            "elapsed_seconds": self.earlier_seconds + self.seconds(),
            "replay_memory": self.agent.memory.state_dict(),
        }


def config_flags(config: dict[str, Any]) -> str:
    """A checkpoint's network configuration as the training flags that give it."""
    if config.get("agent") == "pose":
        return f"--agent pose --image-size {config['image_size']} {'--rgb' if config['rgb'] else '--no-rgb'}"
    switches = [f"--{'' if config[key] else 'no-'}{key.replace('_', '-')}"
                for key in ("timestep_input", "first_frame_input", "pose_input")]
    return " ".join((*switches, f"--image-size {config['image_size']}", "--rgb" if config["rgb"] else "--no-rgb",
                     f"--network {config['network']}"))


def record_greedy_episode(pool: EnvPool, policy: Callable[[np.ndarray, list[int], list[int]], list[int]]
                          ) -> EpisodeRecorder:
    """One greedy episode in worker 0 of `pool`, the scene recorded at 192x192 beside the network's frames."""
    recorder = EpisodeRecorder(size=192)
    pool.reset(0)
    [(_, frame, _, _)] = pool.results()
    stack = FrameStack()
    state = stack.reset(frame)
    recorder.start(pool.scene(0, recorder.size), frame)
    step, done = 0, False
    while not done:
        action = policy(state[None], [0], [step])[0]
        pool.step(0, action)
        [(_, frame, reward, done)] = pool.results()
        step += 1
        recorder.step(pool.scene(0, recorder.size), frame, step, action, reward, done)
        state = stack.push(frame)
    return recorder


def run_lecture_loop(trainer: Trainer, env: Any) -> None:
    """--num-envs 1: the lecture's loop in this process: act, step, store, learn, and so on to the episode's end."""
    while not trainer.finished:
        frames = FrameStack()
        state = frames.reset(trainer.observation.preprocess(env.reset()))
        trainer.log_example_screen(state[-1])
        for t in range(1, trainer.args.max_steps + 1):
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
    """--num-envs N: each worker steps as soon as it has its action; the learner works while they simulate.

    Replies are taken as they come; the workers waiting for an action get it from one batched
    forward pass. Learning yields to the workers, but never falls more than one gradient step
    per worker behind --updates-per-step.
    """
    n = pool.num_envs
    stacks = [FrameStack() for _ in range(n)]
    states: list[Optional[np.ndarray]] = [None] * n  # None: the worker is resetting
    actions = [0] * n
    lengths = [0] * n
    for index in range(n):
        pool.reset(index)
    while not trainer.finished:
        waiting = []
        for index, frame, reward, done in pool.results():
            if states[index] is None:
                states[index] = stacks[index].reset(frame)
                trainer.log_example_screen(frame)
                waiting.append(index)
                continue
            next_state = None if done else stacks[index].push(frame)
            trainer.store(states[index], actions[index], next_state, reward, stream=index)
            states[index] = next_state
            lengths[index] += 1
            if done:
                trainer.end_episode(reward, lengths[index])
                lengths[index] = 0
                if trainer.finished:
                    return
                pool.reset(index)
            else:
                waiting.append(index)
        if waiting:
            chosen = trainer.act(np.stack([states[i] for i in waiting]), waiting, [lengths[i] for i in waiting])
            for index, action in zip(waiting, chosen):
                actions[index] = action
                pool.step(index, action)
        while (owed := trainer.owed()) > 0 and (owed > n or not pool.poll()):
            trainer.learn()


def train(args: argparse.Namespace) -> int:
    checkpoint_path: Path = args.checkpoint
    state_path = resume_path(checkpoint_path)
    device = resolve_device(args.device)
    if args.render and (problem := display_problem()):
        raise UsageError(f"--render: {problem}; train without it and watch the logged episodes in TensorBoard")

    # The run's starting point: a fresh run never replaces an existing file silently.
    resumed: Optional[dict[str, Any]] = None
    if args.resume:
        resumed = load_checkpoint(state_path, device, RESUME_KEYS)
        if resumed["episode"] >= args.episodes:
            raise UsageError(f"--episodes {args.episodes}: {state_path} is already at episode "
                             f"{resumed['episode']}; pass a larger --episodes to continue")
    elif not args.overwrite:
        for existing in (checkpoint_path, state_path):
            if existing.exists():
                raise UsageError(f"{existing} exists: pass --resume to continue that run, another --checkpoint, "
                                 "or --overwrite to replace it")
    start_episode = resumed["episode"] if resumed else 0
    if args.logdir is None:
        args.logdir = Path(resumed["logdir"]) if resumed else Path("runs") / f"kuka_dqn_{args.seed}_{int(time.time())}"
    check_writable_folder(checkpoint_path.parent, "--checkpoint")
    check_writable_folder(args.logdir, "--logdir")

    # Seeding: the environments draw objects from their process's global generators; the agent has
    # its own, so the scenes a seed produces do not depend on the agent's choices. A resumed run
    # reseeds with its episode so that it does not replay the first episodes' scenes.
    seed = args.seed + start_episode
    seed_everything(seed)
    observation = Observation(args.image_size, args.rgb)
    if args.num_envs == 1:
        env = make_env(is_test=False, max_steps=args.max_steps, renders=args.render,
                       camera_size=observation.camera_size)
        n_actions = env.action_space.n
    else:
        torch.set_num_threads(1)  # the other cores belong to the workers' physics
        env = EnvPool(args.num_envs, seed, is_test=False, max_steps=args.max_steps, observation=observation)
        n_actions = env.n_actions
    try:
        trainer = Trainer(args, observation, n_actions, device, seed, resumed, state_path)
    except BaseException:
        env.close()
        raise
    if resumed:
        tqdm.write(f"Resuming from {state_path} at episode {start_episode} ({trainer.memory_note})")

    failure: Optional[WorkerError] = None
    stop: Optional[KeyboardInterrupt] = None
    try:
        if args.num_envs == 1:
            run_lecture_loop(trainer, env)
        else:
            run_parallel_loop(trainer, env)
    except KeyboardInterrupt as signalled:  # Ctrl-C or SIGTERM
        stop = signalled
    except WorkerError as error:
        failure = error
    finally:
        seconds = trainer.seconds()
        env.close()
        resumable = trainer.close()
        save_checkpoint(state_path, resumable)

    completed, mean_reward = trainer.completed, trainer.mean_reward
    if trainer.solved:
        print("Environment solved in {:d} episodes!\tAverage Score: {:.2f}".format(completed, mean_reward))
        print("Average Score: {:.2f}".format(mean_reward))
    elif stop is not None:
        how = "Terminated" if isinstance(stop, Terminated) else "Interrupted"
        print(f"{how} after {completed} episodes: state saved to {state_path}; continue with --resume")
    if not checkpoint_path.exists():
        print(f"No best model saved yet (that starts after episode {BEST_MODEL_AFTER_EPISODE}); "
              f"the last policy is in {state_path}")
    print("Elapsed time: {}".format(timedelta(seconds=resumable["elapsed_seconds"])))
    print(f"Throughput: {(completed - trainer.start_episode) / seconds:.3f} episodes/s, "
          f"{trainer.transitions / seconds:.2f} env steps/s, "
          f"{trainer.agent.gradient_steps / seconds:.2f} gradient steps/s "
          f"with {args.num_envs} environment{'s' if args.num_envs > 1 else ''}")
    if failure is not None:
        print(f"error: {failure}; the run's state is saved in {state_path}: continue with --resume", file=sys.stderr)
        return 1
    if stop is not None:
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return report_errors(lambda: train(args))
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
