"""Train the lecture's DQN to grasp objects with a KUKA arm in pybullet, from 48x48 camera images.

    python bullet_kuka_train.py                 # the lecture's run, best model in policy_dqn.pt
    python bullet_kuka_train.py --resume        # continue from policy_dqn.resume.pt

Saves the best policy (mean success over the last 100 episodes) to --checkpoint, keeps a
resumable state next to it, and logs to TensorBoard under --logdir.
"""
from __future__ import annotations

import random
import sys
import tempfile
import time
import timeit
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.optim as optim
from tensorboardX import SummaryWriter
from tqdm import tqdm

from common import (
    CHECKPOINT_KEYS,
    DQN,
    SCREEN_SIZE,
    FrameStack,
    OneLineArgumentParser,
    ReplayMemory,
    UsageError,
    epsilon_by_episode,
    load_checkpoint,
    load_state,
    make_env,
    networks_state,
    optimize_model,
    positive_float,
    positive_int,
    preprocess_frame,
    probability,
    resolve_device,
    resume_path,
    save_checkpoint,
    seed_everything,
    select_action,
)

BEST_MODEL_AFTER_EPISODE = 100
"""The best model is saved only once the mean covers more than this many episodes (lecture)."""
SOLVE_AFTER_EPISODE = 200
"""The solve condition is checked from this episode on (lecture)."""
RESUME_KEYS = CHECKPOINT_KEYS + (
    "episode", "total_rewards", "best_mean_reward", "ten_rewards", "global_step", "logdir", "elapsed_seconds")


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = OneLineArgumentParser(description="Train the lecture's DQN on KukaDiverseObjectEnv (pybullet).")
    parser.add_argument("--episodes", type=positive_int, default=10**7,
                        help="train until this many episodes in all, resumed ones included (lecture: 10**7)")
    parser.add_argument("--max-steps", type=positive_int, default=20,
                        help="actions per episode before the environment ends it (maxSteps)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="transitions per gradient step")
    parser.add_argument("--gamma", type=probability, default=0.99, help="discount factor")
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--memory", type=positive_int, default=10000, help="replay memory capacity in transitions")
    parser.add_argument("--target-update", type=positive_int, default=1000,
                        help="copy the policy network into the target network every this many episodes")
    parser.add_argument("--eps-start", type=probability, default=0.9, help="epsilon at episode 0")
    parser.add_argument("--eps-end", type=probability, default=0.1, help="lowest epsilon")
    parser.add_argument("--eps-decay-last-frame", type=positive_int, default=10**4,
                        help="epsilon falls by 1 over this many episodes: eps = max(end, start - episode / this)")
    parser.add_argument("--solve-score", type=float, default=50.0,
                        help="stop once the mean success over the last 100 episodes (in %%) exceeds this, "
                             f"from episode {SOLVE_AFTER_EPISODE} on")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the networks run; auto picks CUDA when a GPU is usable")
    parser.add_argument("--seed", type=int, default=1, help="seed of the environment, the agent and torch")
    parser.add_argument("--checkpoint", type=Path, default=Path("policy_dqn.pt"),
                        help="best model file; the resumable state goes beside it as NAME.resume.pt")
    parser.add_argument("--logdir", type=Path, default=None,
                        help="TensorBoard folder (default: runs/kuka_dqn_SEED_TIME, or the resumed run's)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the resumable state beside --checkpoint instead of starting over")
    start.add_argument("--overwrite", action="store_true",
                       help="start over even if --checkpoint or its resumable state exists, replacing them")
    args = parser.parse_args(argv)
    if args.memory < args.batch_size:
        parser.error(f"argument --memory: must hold at least one batch ({args.batch_size}), got {args.memory}")
    return args


def check_writable_folder(folder: Path, flag: str) -> None:
    """Create `folder` if needed and prove a file can be written there, before hours of training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {folder}: cannot write there ({error.strerror or error})") from None


def train(args) -> int:
    checkpoint_path: Path = args.checkpoint
    state_path = resume_path(checkpoint_path)
    device = resolve_device(args.device)

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
    if args.logdir is not None:
        logdir = args.logdir
    elif resumed:
        logdir = Path(resumed["logdir"])
    else:
        logdir = Path("runs") / f"kuka_dqn_{args.seed}_{int(time.time())}"
    check_writable_folder(checkpoint_path.parent, "--checkpoint")
    check_writable_folder(logdir, "--logdir")

    # Seeding: the environment draws objects from the global generators; the agent has its own,
    # so the scenes a seed produces do not depend on the agent's choices. A resumed run reseeds
    # with its episode so that it does not replay the first episodes' scenes.
    seed = args.seed + start_episode
    seed_everything(seed)
    rng = random.Random(seed)

    env = make_env(is_test=False, max_steps=args.max_steps)
    n_actions = env.action_space.n
    policy_net = DQN(SCREEN_SIZE, SCREEN_SIZE, n_actions).to(device)
    target_net = DQN(SCREEN_SIZE, SCREEN_SIZE, n_actions).to(device)
    target_net.load_state_dict(policy_net.state_dict())
    target_net.eval()
    optimizer = optim.Adam(policy_net.parameters(), lr=args.lr)
    memory = ReplayMemory(args.memory, rng)

    total_rewards: list[float] = []
    best_mean_reward: Optional[float] = None
    ten_rewards = 0.0
    global_step = 0
    earlier_seconds = 0.0
    if resumed:
        load_state(policy_net, resumed, "policy_net_state_dict", state_path)
        load_state(target_net, resumed, "target_net_state_dict", state_path)
        load_state(optimizer, resumed, "optimizer_policy_net_state_dict", state_path)
        for group in optimizer.param_groups:
            group["lr"] = args.lr
        total_rewards = list(resumed["total_rewards"])
        best_mean_reward = resumed["best_mean_reward"]
        ten_rewards = resumed["ten_rewards"]
        global_step = resumed["global_step"]
        earlier_seconds = resumed["elapsed_seconds"]
        print(f"Resuming from {state_path} at episode {start_episode} (replay memory starts empty)")

    writer = SummaryWriter(str(logdir))
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items()),
    )

    start_time = timeit.default_timer()
    steps_this_run = 0
    completed = start_episode
    solved = False
    interrupted = False
    progress = tqdm(total=args.episodes, initial=start_episode, unit="ep", disable=None, dynamic_ncols=True)
    try:
        for i_episode in range(start_episode, args.episodes):
            epsilon = epsilon_by_episode(i_episode, args.eps_start, args.eps_end, args.eps_decay_last_frame)
            frames = FrameStack()
            state = frames.reset(preprocess_frame(env.reset()).to(device))
            losses, q_values = [], []
            for t in range(1, args.max_steps + 1):
                action = select_action(policy_net, state, epsilon, n_actions, rng)
                obs, reward, done, _ = env.step(action)
                next_state = None if done else frames.push(preprocess_frame(obs).to(device))

                memory.push(state, torch.tensor([[action]], device=device), next_state,
                            torch.tensor([float(reward)], device=device))
                state = next_state
                global_step += 1
                steps_this_run += 1

                result = optimize_model(policy_net, target_net, optimizer, memory, args.batch_size, args.gamma)
                if result is not None:
                    losses.append(result[0])
                    q_values.append(result[1])
                if done:
                    break

            ten_rewards += reward
            total_rewards.append(float(reward))
            completed = i_episode + 1
            mean_reward = float(np.mean(total_rewards[-100:]) * 100)
            steps_per_second = steps_this_run / (timeit.default_timer() - start_time)
            writer.add_scalar("epsilon", epsilon, i_episode)
            writer.add_scalar("success_rate_last_100", mean_reward, i_episode)
            writer.add_scalar("episode_length", t, i_episode)
            writer.add_scalar("steps_per_second", steps_per_second, i_episode)
            if losses:
                writer.add_scalar("loss", torch.stack(losses).mean().item(), i_episode)
                writer.add_scalar("mean_q", torch.stack(q_values).mean().item(), i_episode)

            if (best_mean_reward is None or best_mean_reward < mean_reward) and i_episode > BEST_MODEL_AFTER_EPISODE:
                save_checkpoint(checkpoint_path, {**networks_state(policy_net, target_net, optimizer),
                                                  "episode": i_episode, "mean_reward": mean_reward})
                if best_mean_reward is not None:
                    tqdm.write("Best mean reward updated %.1f -> %.1f, model saved" % (best_mean_reward, mean_reward))
                best_mean_reward = mean_reward

            if (i_episode + 1) % 10 == 0:
                writer.add_scalar("ten episodes average rewards", ten_rewards / 10.0, i_episode)
                ten_rewards = 0.0
            if i_episode % args.target_update == 0:
                target_net.load_state_dict(policy_net.state_dict())

            progress.update(1)
            progress.set_postfix(eps=f"{epsilon:.3f}", success=f"{mean_reward:.1f}%", sps=f"{steps_per_second:.1f}")
            if i_episode >= SOLVE_AFTER_EPISODE and mean_reward > args.solve_score:
                solved = True
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        writer.close()
        env.close()
        elapsed_seconds = earlier_seconds + timeit.default_timer() - start_time
        save_checkpoint(state_path, {
            **networks_state(policy_net, target_net, optimizer),
            "episode": completed,
            "total_rewards": total_rewards[-100:],
            "best_mean_reward": best_mean_reward,
            "ten_rewards": ten_rewards,
            "global_step": global_step,
            "logdir": str(logdir),
            "elapsed_seconds": elapsed_seconds,
        })

    if solved:
        print("Environment solved in {:d} episodes!\tAverage Score: {:.2f}".format(completed, mean_reward))
        print("Average Score: {:.2f}".format(mean_reward))
    elif interrupted:
        print(f"Interrupted after {completed} episodes: state saved to {state_path}; continue with --resume")
    if not checkpoint_path.exists():
        print(f"No best model saved yet (that starts after episode {BEST_MODEL_AFTER_EPISODE}); "
              f"the last policy is in {state_path}")
    print("Elapsed time: {}".format(timedelta(seconds=elapsed_seconds)))
    return 130 if interrupted else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
