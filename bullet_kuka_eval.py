"""Evaluate a trained grasping policy greedily, or the uniform random policy as the baseline.

    python bullet_kuka_eval.py                          # policy_dqn.pt, 10 episodes on test objects
    python bullet_kuka_eval.py --episodes 100 --objects train
    python bullet_kuka_eval.py --policy random --episodes 100 --num-envs 4
    python bullet_kuka_eval.py --episodes 3 --gif grasp.gif    # the scene and the network's view

Prints each episode's reward as the lecture does, then the success rate with its 95% interval.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from common import (
    ACTION_NAMES,
    DQN,
    DQNPolicy,
    EnvPool,
    EpisodeRecorder,
    FrameStack,
    Observation,
    OneLineArgumentParser,
    UsageError,
    check_writable_folder,
    display_problem,
    load_checkpoint,
    load_state,
    make_env,
    observation_of,
    positive_int,
    render_scene,
    report_errors,
    resolve_device,
    resume_path,
    seed_everything,
    seed_int,
    success_rate,
)
from pose_agent import GraspNet, PoseLattice, PosePolicy, agent_config

PRETRAINED = "pretrained/policy_dqn.pt"
"""The shipped policy, trained with --preset fast (see the README)."""

Policy = Callable[[np.ndarray, list[int], list[int]], list[int]]
"""Actions for a batch of uint8 states, given the indices of their environments and their timesteps."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Evaluate a DQN grasping policy on KukaDiverseObjectEnv (pybullet).")
    parser.add_argument("--episodes", type=positive_int, default=10, help="episodes to evaluate (lecture: 10)")
    parser.add_argument("--max-steps", type=positive_int, default=20,
                        help="actions per episode before the environment ends it (maxSteps)")
    parser.add_argument("--objects", choices=("test", "train"), default="test",
                        help="held-out test objects (lecture) or the training objects")
    parser.add_argument("--policy", choices=("greedy", "random"), default="greedy",
                        help="the checkpoint's greedy policy, or uniform random actions as the baseline")
    parser.add_argument("--num-envs", type=positive_int, default=1,
                        help="environments, each in its own worker process, sharing the episodes; "
                             "1 runs them in this process")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs; auto picks CUDA when a GPU is usable")
    parser.add_argument("--seed", type=seed_int, default=1,
                        help="seed of the scenes; the same seed and --num-envs show every policy the same objects")
    parser.add_argument("--checkpoint", type=Path, default=Path("policy_dqn.pt"),
                        help="checkpoint holding 'policy_net_state_dict' (ignored with --policy random)")
    parser.add_argument("--gif", type=Path, default=None,
                        help="record the episodes into this animated GIF: a 256x256 view of the scene beside "
                             "the frame the network sees, with step, action and outcome; needs no display")
    parser.add_argument("--overwrite", action="store_true", help="replace the --gif file if it exists")
    parser.add_argument("--render", action="store_true", help="watch the episodes in the PyBullet GUI (needs a display)")
    args = parser.parse_args(argv)
    if (args.gif is not None or args.render) and args.num_envs > 1:
        flag = "--gif" if args.gif is not None else "--render"
        parser.error(f"argument {flag}: works with the episodes played in this process; use --num-envs 1")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        parser.error(f"argument --gif: the file name must end in .gif, got {args.gif}")
    return args


Played = tuple[list[float], list[list[int]]]
"""Each episode's final reward and the actions taken in it, in episode order."""


def run_episodes(env: Any, observation: Observation, policy: Policy, episodes: int,
                 recorder: Optional[EpisodeRecorder] = None) -> Played:
    """One environment in this process, episode after episode, as in the lecture; prints each reward.

    Camera images become `observation`'s frames. A recorder gets the scene and the network's frame
    after the reset and after every step.
    """
    rewards, sequences = [], []
    for i_episode in range(episodes):
        frames = FrameStack()
        frame = observation.preprocess(env.reset())
        state = frames.reset(frame)
        if recorder is not None:
            recorder.start(render_scene(env, recorder.size), frame)
        done, actions = False, []
        while not done:
            action = policy(state[None], [0], [len(actions)])[0]
            actions.append(action)
            obs, reward, done, _ = env.step(action)
            frame = observation.preprocess(obs)
            state = frames.push(frame)
            if recorder is not None:
                recorder.step(render_scene(env, recorder.size), frame, len(actions), action, reward, done)
        rewards.append(reward)
        sequences.append(actions)
        print("Episode: {0:d}, reward: {1}".format(i_episode + 1, reward))
    return rewards, sequences


def run_episodes_in_parallel(pool: EnvPool, policy: Policy, episodes: int) -> Played:
    """The episodes shared out over the workers, worker i playing episodes i, i + N, ...; a seed fixes the scenes.

    Waiting workers get one batched forward pass. Each episode is printed once it and all the
    episodes before it are done, so the output is the same from run to run.
    """
    n = pool.num_envs
    queues = [list(range(index, episodes, n)) for index in range(n)]
    playing: list[int] = [0] * n
    stacks = [FrameStack() for _ in range(n)]
    states: list[Optional[np.ndarray]] = [None] * n  # None: the worker is resetting
    actions_taken: list[list[int]] = [[] for _ in range(n)]  # this episode's, so far; their count is its timestep

    def start_next(index: int) -> None:
        if queues[index]:
            playing[index] = queues[index].pop(0)
            states[index] = None
            actions_taken[index] = []
            pool.reset(index)

    for index in range(n):
        start_next(index)
    rewards: dict[int, float] = {}
    sequences: dict[int, list[int]] = {}
    printed = 0
    while printed < episodes:
        waiting = []
        for index, frame, reward, done in pool.results():
            if done:
                rewards[playing[index]] = reward
                sequences[playing[index]] = actions_taken[index]
                start_next(index)
                continue
            if states[index] is None:
                states[index] = stacks[index].reset(frame)
            else:
                states[index] = stacks[index].push(frame)
            waiting.append(index)
        while printed in rewards:
            print("Episode: {0:d}, reward: {1}".format(printed + 1, rewards[printed]))
            printed += 1
        if waiting:
            actions = policy(np.stack([states[i] for i in waiting]), waiting, [len(actions_taken[i]) for i in waiting])
            for index, action in zip(waiting, actions):
                actions_taken[index].append(action)
                pool.step(index, action)
    return [rewards[i] for i in range(episodes)], [sequences[i] for i in range(episodes)]


def action_summary(sequences: list[list[int]]) -> str:
    """How often each action was taken, and how many episodes took one action only: a policy that ignores
    the scene repeats itself."""
    counts = Counter(action for actions in sequences for action in actions)
    repeated = sum(len(set(actions)) == 1 for actions in sequences)
    taken = ", ".join(f"{name} {counts[action]}" for action, name in enumerate(ACTION_NAMES))
    return f"Actions: {taken}; {repeated}/{len(sequences)} episodes repeat one action throughout"


def evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    seed_everything(args.seed)

    if args.render and (problem := display_problem()):
        raise UsageError(f"--render: {problem}; evaluate without it, or record the episodes with --gif out.gif")
    if args.gif is not None:
        if args.gif.exists() and not args.overwrite:
            raise UsageError(f"--gif {args.gif}: the file exists; pass --overwrite to replace it, or another name")
        check_writable_folder(args.gif.parent, "--gif")

    checkpoint = None
    if args.policy == "greedy":
        latest = resume_path(args.checkpoint)
        if not args.checkpoint.exists() and not latest.exists():
            raise UsageError(f"{args.checkpoint}: no such checkpoint file; train one (python bullet_kuka_train.py "
                             f"--preset fast) or pass --checkpoint {PRETRAINED}")
        if not args.checkpoint.exists() and latest.exists():
            raise UsageError(f"{args.checkpoint}: no such checkpoint file yet (training saves the best model after "
                             f"episode 100); to evaluate the latest policy, pass --checkpoint {latest}")
        checkpoint = load_checkpoint(args.checkpoint, device, ("policy_net_state_dict",))
        agent, config = agent_config(checkpoint, args.checkpoint)
    observation = Observation() if checkpoint is None else observation_of(config)

    is_test = args.objects == "test"
    if args.num_envs == 1:
        env = make_env(is_test=is_test, max_steps=args.max_steps, renders=args.render,
                       camera_size=observation.camera_size)
        n_actions = env.action_space.n
    else:
        env = EnvPool(args.num_envs, args.seed, is_test=is_test, max_steps=args.max_steps, observation=observation)
        n_actions = env.n_actions
    recorder = EpisodeRecorder() if args.gif is not None else None
    try:
        if checkpoint is None:
            # A generator per environment: the actions do not depend on the order the workers answer in.
            rngs = [random.Random(args.seed + index) for index in range(args.num_envs)]

            def policy(states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
                return [rngs[index].randrange(n_actions) for index in indices]
        elif agent == "pose":
            grasp_net = GraspNet.from_config(config).to(device)
            load_state(grasp_net, checkpoint, "policy_net_state_dict", args.checkpoint)
            policy = PosePolicy(grasp_net, PoseLattice())
        else:
            policy_net = DQN.from_config(config, n_actions).to(device)
            load_state(policy_net, checkpoint, "policy_net_state_dict", args.checkpoint)
            policy = DQNPolicy(policy_net, n_actions)

        if args.num_envs == 1:
            rewards, sequences = run_episodes(env, observation, policy, args.episodes, recorder)
        else:
            rewards, sequences = run_episodes_in_parallel(env, policy, args.episodes)
    finally:
        env.close()
    if recorder is not None:
        recorder.save_gif(args.gif)
        print(f"Recorded {len(recorder.frames)} frames of {args.episodes} episode{'s' if args.episodes > 1 else ''} "
              f"in {args.gif}")

    print(action_summary(sequences))
    successes = int(sum(rewards))
    print(f"Success rate: {success_rate(successes, args.episodes)}, {args.policy} policy on {args.objects} objects")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return report_errors(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
