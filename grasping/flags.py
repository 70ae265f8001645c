"""The two scripts' flags: every hyperparameter with its help line and the lecture's value as its default, and
the presets that start from other values. `parse_training_args` and `parse_eval_args` are what the scripts and
the benchmarks call."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DQN, MIN_IMAGE_SIZE, NETWORKS, SCREEN_SIZE
from grasping.cli import (
    OneLineArgumentParser,
    add_backend_arguments,
    check_backend_arguments,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    seed_int,
)
from grasping.pose_agent import EXPLORATIONS, MAX_PATCH_SCALES, MAX_SCENE_RETRIES
from grasping.runlog import SOLVE_AFTER_EPISODE

PRESETS: dict[str, dict[str, Any]] = {
    "lecture": {},
    "pose": dict(
        agent="pose",
        image_size=96,
        rgb=True,
        lr=1e-3,
        eps_start=1.0,
        eps_decay_episodes=1000,
        learning_starts=100,
        refit_every=200,
    ),
    "double-nstep-dqn": dict(
        double_dqn=True,
        n_step=3,
        gamma=0.9,
        target_update_steps=500,
        augment=True,
        eps_start=1.0,
        eps_end=0.05,
        eps_decay_episodes=500,
        memory=30000,
        learning_starts=1000,
        updates_per_step=4.0,
    ),
}
"""Defaults that --preset puts in place of the lecture's; flags given on the command line still win."""
PRESET_ALIASES = {"fast": "pose", "fast-dqn": "double-nstep-dqn"}
"""Earlier names of the presets, still accepted."""

DQN_ONLY = (
    "gamma",
    "target_update",
    "target_update_steps",
    "tau",
    "double_dqn",
    "n_step",
    "augment",
    "timestep_input",
    "first_frame_input",
    "pose_input",
    "network",
)
"""Flags of the lecture's DQN that the pose agent has no use for: given with --agent pose, they are refused."""
POSE_ONLY = ("refit_every", "refit_epochs", "exploration", "retry_failed", "height", "patch_scales", "overhead")
"""Flags of the pose agent, refused with --agent dqn."""
LEARNING_FLAGS = (
    "batch_size",
    "gamma",
    "lr",
    "memory",
    "target_update",
    "target_update_steps",
    "tau",
    "double_dqn",
    "n_step",
    "augment",
    "learning_starts",
    "eps_start",
    "eps_end",
    "eps_decay_episodes",
    "updates_per_step",
    "refit_every",
    "refit_epochs",
    "exploration",
    "retry_failed",
)
"""The learning hyperparameters a resumable state records: a resume that changes one is refused unless
--change-hyperparameters says so. The agent and its network's configuration are checked from the checkpoint;
--episodes, --max-steps, --num-envs and the run's files and devices may change."""


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


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent, its starting values, and how long it trains."""
    parser.add_argument(
        "--preset",
        choices=(*PRESETS, *PRESET_ALIASES),
        default="lecture",
        help="defaults to start from: the lecture's; 'pose' (formerly 'fast'), the pose agent, "
        f"{preset_flags('pose')}; or 'double-nstep-dqn' (formerly 'fast-dqn'), the lecture's DQN "
        f"with the options measured as fast-a, {preset_flags('double-nstep-dqn')}, which does "
        "not beat the random policy on unseen objects in 3,000 episodes; flags given here win",
    )
    parser.add_argument(
        "--agent",
        choices=("dqn", "pose"),
        default="dqn",
        help="the lecture's DQN, or the pose agent (grasping/pose_agent.py), which scores the final "
        "poses the gripper can still reach on the episode's first frame and heads for the best; "
        "the checkpoint records it",
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        default=10**7,
        help="train until this many episodes in all, resumed ones included (lecture: 10**7)",
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=20,
        help="actions per episode before the environment ends it (maxSteps)",
    )


def add_dqn_arguments(parser: argparse.ArgumentParser) -> None:
    """The lecture's DQN hyperparameters."""
    parser.add_argument("--batch-size", type=positive_int, default=32, help="transitions per gradient step")
    parser.add_argument("--gamma", type=probability, default=0.99, help="discount factor")
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate")
    parser.add_argument(
        "--memory",
        type=positive_int,
        default=10000,
        help="replay memory capacity: transitions (dqn) or finished episodes (pose)",
    )
    parser.add_argument(
        "--target-update",
        type=positive_int,
        default=1000,
        help="copy the policy network into the target network every this many episodes",
    )
    sync = parser.add_mutually_exclusive_group()
    sync.add_argument(
        "--target-update-steps",
        type=positive_int,
        default=None,
        help="copy the target network every this many gradient steps of the run, instead of by episodes",
    )
    sync.add_argument(
        "--tau",
        type=probability,
        default=None,
        help="Polyak averaging after every gradient step, target = tau * policy + (1 - tau) * target, "
        "instead of copies by episodes",
    )
    parser.add_argument(
        "--double-dqn",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Double DQN target: the policy network picks a', the target network values it",
    )
    parser.add_argument(
        "--n-step",
        type=positive_int,
        default=1,
        help="bootstrap n steps on from the discounted rewards in between (lecture: 1); "
        "n >= --max-steps gives Monte Carlo returns",
    )
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random-shift augmentation of sampled states: pad 4 pixels, crop back at random",
    )


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """What the network sees; the checkpoint records it."""
    parser.add_argument(
        "--timestep-input",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="feed the episode's timestep to the network beside the frames (the slides' state); "
        "the checkpoint records it, and the eval script rebuilds the network from the file",
    )
    parser.add_argument(
        "--first-frame-input",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="give the network the episode's first frame ahead of the stack: the scene before the "
        "arm covers it (what the pose agent scores); the checkpoint records it",
    )
    parser.add_argument(
        "--pose-input",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="feed the arm's commanded pose (x, y, gripper angle), which follows from the actions "
        "taken, to the network beside the frames; the checkpoint records it",
    )
    parser.add_argument(
        "--image-size",
        type=image_side,
        default=SCREEN_SIZE,
        help="side in pixels of the square frames the network sees (lecture: 40, resized from the "
        "48x48 camera); above 48 the camera renders at this size; the checkpoint records it",
    )
    parser.add_argument(
        "--rgb",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the camera's colour instead of the lecture's grayscale: 3 channels per frame; "
        "the checkpoint records it",
    )
    parser.add_argument(
        "--height",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="--agent pose: add a channel to each frame, the height of what each pixel shows (the same camera's "
        "depth buffer, in millimetres above the tray's floor); the checkpoint records it",
    )
    parser.add_argument(
        "--overhead",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="--agent pose: see the tray through a second camera straight above it, which the environment does not "
        "have (the arm lifted out of its view while it renders), instead of the environment's oblique camera; the "
        "checkpoint records it",
    )
    parser.add_argument(
        "--patch-scales",
        type=int,
        choices=range(1, MAX_PATCH_SCALES + 1),
        default=1,
        metavar=f"{{1-{MAX_PATCH_SCALES}}}",
        help="--agent pose: the patches the grasp network sees around each pose: 1, the pose's own patch, or K, "
        "that patch and K - 1 others of as many samples, 2, 4, ... times as wide (the clutter around the pose); "
        "the checkpoint records it",
    )
    parser.add_argument(
        "--network",
        choices=tuple(NETWORKS),
        default=DQN.network,
        help="the Q-network's convolutions: the lecture's, or 'fine' ones (strides 2, 1, 2, 2) that "
        "keep a 6x6 grid of positions at 48x48; the checkpoint records it",
    )


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """Exploration, and when and how much the agent learns."""
    parser.add_argument(
        "--learning-starts",
        type=non_negative_int,
        default=0,
        help="no gradient step before the memory holds this many transitions, or episodes with --agent "
        "pose (lecture: one batch)",
    )
    parser.add_argument(
        "--eps-start",
        type=probability,
        default=0.9,
        help="epsilon at episode 0: the chance of a random action, or with --agent pose of an "
        "episode that heads for a random final pose",
    )
    parser.add_argument("--eps-end", type=probability, default=0.1, help="lowest epsilon")
    parser.add_argument(
        "--eps-decay-episodes",
        "--eps-decay-last-frame",
        dest="eps_decay_episodes",
        type=positive_int,
        default=10**4,
        help="epsilon falls by 1 over this many episodes: eps = max(end, start - episode / this) "
        "(the lecture's EPS_DECAY_LAST_FRAME, which counts episodes)",
    )
    parser.add_argument(
        "--solve-score",
        type=float,
        default=50.0,
        help="stop once the mean success over the last 100 episodes (in %%) exceeds this, "
        f"from episode {SOLVE_AFTER_EPISODE} on",
    )
    parser.add_argument(
        "--updates-per-step",
        type=positive_float,
        default=1.0,
        help="gradient steps per collected transition (lecture: 1)",
    )
    parser.add_argument(
        "--refit-every",
        type=non_negative_int,
        default=0,
        help="--agent pose: after every this many episodes, retrain the grasp network from fresh "
        "weights on the whole memory instead of learning online; 0: online, --updates-per-step "
        "gradient steps per transition",
    )
    parser.add_argument(
        "--refit-epochs",
        type=positive_int,
        default=10,
        help="--agent pose with --refit-every: passes over the memory in each refit",
    )
    parser.add_argument(
        "--exploration",
        choices=EXPLORATIONS,
        default="uniform",
        help="--agent pose: the final pose an exploring episode heads for: drawn uniformly, or 'boltzmann', "
        "in proportion to its predicted odds of success (exp of its logit), which labels the poses the greedy "
        "choice is made between",
    )
    parser.add_argument(
        "--retry-failed",
        type=non_negative_int,
        default=0,
        help="--agent pose: after a training episode that lifted nothing, play the same scene again, up to this "
        f"many times in a row (at most {MAX_SCENE_RETRIES}), heading for a final pose not yet tried there; each "
        "retry counts as an episode; 0: every episode draws a new scene",
    )


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the networks and the environments run."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the networks run; auto picks CUDA when a GPU is usable",
    )
    parser.add_argument(
        "--num-envs",
        type=positive_int,
        default=1,
        help="environments, each in its own worker process; 1 runs the lecture's loop in this process",
    )
    add_backend_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Seeding, files, logging, and whether to resume."""
    parser.add_argument("--seed", type=seed_int, default=1, help="seed of the environments, the agent and torch")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("policy_dqn.pt"),
        help="best model file; the resumable state goes beside it as NAME.resume.pt",
    )
    parser.add_argument(
        "--logdir",
        type=Path,
        default=None,
        help="TensorBoard folder (default: runs/kuka_dqn_SEED_TIME, or the resumed run's)",
    )
    parser.add_argument(
        "--clip-every",
        type=non_negative_int,
        default=500,
        help="every this many episodes, log to TensorBoard an image strip of one greedy episode "
        "on test objects, played in a separate process; 0: never",
    )
    parser.add_argument(
        "--render", action="store_true", help="watch training in the PyBullet GUI (needs a display and --num-envs 1)"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue from the resumable state beside --checkpoint instead of starting over, with the "
        "same learning hyperparameters",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="start over even if --checkpoint or its resumable state exists, replacing them",
    )
    parser.add_argument(
        "--change-hyperparameters",
        action="store_true",
        help="with --resume: go on with the learning hyperparameters given here where they differ "
        "from the saved run's, instead of refusing to",
    )


def training_parser() -> OneLineArgumentParser:
    """bullet_kuka_train.py's flags with the lecture's defaults."""
    parser = OneLineArgumentParser(
        prog="bullet_kuka_train.py",
        description="Train the lecture's DQN, or the pose agent, on KukaDiverseObjectEnv (pybullet).",
    )
    add_agent_arguments(parser)
    add_dqn_arguments(parser)
    add_input_arguments(parser)
    add_schedule_arguments(parser)
    add_execution_arguments(parser)
    add_run_arguments(parser)
    return parser


def parse_training_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """bullet_kuka_train.py's flags, a preset's values in place of the defaults, checked against each other."""
    parser = training_parser()
    defaults = {dest: parser.get_default(dest) for dest in (*DQN_ONLY, *POSE_ONLY, "updates_per_step")}
    preset = parser.parse_known_args(argv)[0].preset
    parser.set_defaults(**PRESETS[PRESET_ALIASES.get(preset, preset)])
    args = parser.parse_args(argv)
    args.preset = PRESET_ALIASES.get(args.preset, args.preset)
    check_backend_arguments(parser, args)
    for dest in DQN_ONLY if args.agent == "pose" else POSE_ONLY:
        if getattr(args, dest) != defaults[dest]:
            parser.error(
                f"argument --{dest.replace('_', '-')}: applies to --agent "
                f"{'dqn' if args.agent == 'pose' else 'pose'} only"
            )
    if args.refit_every and args.updates_per_step != defaults["updates_per_step"]:
        parser.error("argument --updates-per-step: applies to online learning; --refit-every retrains instead")
    if not args.refit_every and args.refit_epochs != defaults["refit_epochs"]:
        parser.error("argument --refit-epochs: applies with --refit-every only")
    if args.retry_failed > MAX_SCENE_RETRIES:
        parser.error(f"argument --retry-failed: at most {MAX_SCENE_RETRIES}, got {args.retry_failed}")
    if args.tau is not None:  # the two are exclusive on the command line; a preset's step sync yields to --tau
        args.target_update_steps = None
    if args.render and args.num_envs > 1:
        parser.error("argument --render: shows the environment of this process; use --num-envs 1")
    if args.memory < max(args.batch_size, args.num_envs):
        parser.error(
            f"argument --memory: must hold at least one batch ({args.batch_size}) and one transition "
            f"per environment ({args.num_envs}), got {args.memory}"
        )
    if args.change_hyperparameters and not args.resume:
        parser.error("argument --change-hyperparameters: applies with --resume only")
    return args


def eval_parser() -> OneLineArgumentParser:
    """bullet_kuka_eval.py's flags."""
    parser = OneLineArgumentParser(
        prog="bullet_kuka_eval.py",
        description="Evaluate a grasping policy greedily on KukaDiverseObjectEnv "
        "(pybullet), or the random policy as the baseline.",
    )
    parser.add_argument("--episodes", type=positive_int, default=10, help="episodes to evaluate (lecture: 10)")
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=20,
        help="actions per episode before the environment ends it (maxSteps)",
    )
    parser.add_argument(
        "--objects",
        choices=("test", "train"),
        default="test",
        help="held-out test objects (lecture) or the training objects",
    )
    parser.add_argument(
        "--policy",
        choices=("greedy", "random"),
        default="greedy",
        help="the checkpoint's greedy policy, or uniform random actions as the baseline",
    )
    parser.add_argument(
        "--num-envs",
        type=positive_int,
        default=1,
        help="environments, each in its own worker process, sharing the episodes; 1 runs them in this process",
    )
    add_backend_arguments(parser)
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the network runs; auto picks CUDA when a GPU is usable",
    )
    parser.add_argument(
        "--seed",
        type=seed_int,
        default=1,
        help="seed of the scenes; the same seed and --num-envs show every policy the same objects",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("policy_dqn.pt"),
        help="checkpoint holding 'policy_net_state_dict' (ignored with --policy random)",
    )
    parser.add_argument(
        "--gif",
        type=Path,
        default=None,
        help="record the episodes into this animated GIF: a 256x256 view of the scene beside "
        "the frame the network sees, with step, action and outcome; needs no display",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the --gif file if it exists")
    parser.add_argument(
        "--render", action="store_true", help="watch the episodes in the PyBullet GUI (needs a display)"
    )
    return parser


def parse_eval_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """bullet_kuka_eval.py's flags, checked against each other."""
    parser = eval_parser()
    args = parser.parse_args(argv)
    check_backend_arguments(parser, args)
    if (args.gif is not None or args.render) and args.num_envs > 1:
        flag = "--gif" if args.gif is not None else "--render"
        parser.error(f"argument {flag}: works with the episodes played in this process; use --num-envs 1")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        parser.error(f"argument --gif: the file name must end in .gif, got {args.gif}")
    return args
