"""A training run's log: what happens as episodes end, whichever agent learns.

`RunLog` counts the episodes, writes TensorBoard (the lecture's scalars, the hyperparameters, an
example screen and image strips of greedy episodes), drives the progress bar, saves the best model
and checks the solve condition, as in the lecture. The learner knows nothing of it.

Every TensorBoard write holds stop signals back until it is done: tensorboardX hands events to a thread
through a queue, and a put interrupted half-way would leave the queue's count wrong and `close` waiting
for ever.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tensorboardX import SummaryWriter
from tqdm import tqdm

from common import Observation
from grasping.checkpoints import save_checkpoint
from grasping.cli import stop_signals_deferred
from grasping.environment import worker_seed
from grasping.process_pool import ProcessEnvPool
from grasping.recording import record_greedy_episode
from grasping.rollouts import Policy

BEST_MODEL_AFTER_EPISODE = 100
"""The best model is saved only once the mean covers more than this many episodes (lecture)."""
SOLVE_AFTER_EPISODE = 200
"""The solve condition is checked from this episode on (lecture)."""
RESUMED_COUNTS = (
    "episode",
    "total_rewards",
    "best_mean_reward",
    "ten_rewards",
    "global_step",
    "logdir",
    "elapsed_seconds",
)
"""What a resumable state keeps of the log."""


class RunLog:
    """The bookkeeping of a run, resumed or new: episode counts, TensorBoard, tqdm, best model, solve condition.

    `resumed` is a resumable state (None: a new run). Two of the learner's methods are called back:
    `networks`, the checkpoint content saved as the best model, and `greedy_policy`, a policy for the clips.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        observation: Observation,
        seed: int,
        resumed: dict[str, Any] | None,
        networks: Callable[[], dict[str, Any]],
        greedy_policy: Callable[[], Policy],
    ) -> None:
        self.args, self.observation, self.networks, self.greedy_policy = args, observation, networks, greedy_policy
        self.clip_seed = worker_seed(seed, args.num_envs)  # not one of the training workers' seeds
        self.clip_pool: ProcessEnvPool | None = None  # started for the first clip
        self.example_logged = False
        resumed = resumed or {}
        self.completed: int = resumed.get("episode", 0)
        self.total_rewards: list[float] = list(resumed.get("total_rewards", []))
        self.best_mean_reward: float | None = resumed.get("best_mean_reward")
        self.ten_rewards: float = resumed.get("ten_rewards", 0.0)
        self.global_step: int = resumed.get("global_step", 0)
        self.earlier_seconds: float = resumed.get("elapsed_seconds", 0.0)
        self.start_episode = self.completed
        self.mean_reward = float(np.mean(self.total_rewards[-100:]) * 100) if self.total_rewards else 0.0
        self.solved = False
        self.transitions = 0
        """Transitions collected by this process, for steps per second."""
        self.lost_episodes = 0
        """Episodes dropped because their environment worker was lost, in this process."""
        self.losses: list[torch.Tensor] = []
        self.q_values: list[torch.Tensor] = []

        self.writer = SummaryWriter(str(args.logdir), flush_secs=1)  # each episode in TensorBoard within a second
        with stop_signals_deferred():
            self.writer.add_text(
                "hyperparameters",
                "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items()),
            )
        self.progress = tqdm(total=args.episodes, initial=self.completed, unit="ep", disable=None, dynamic_ncols=True)
        self.start_time = timeit.default_timer()

    @property
    def finished(self) -> bool:
        return self.solved or self.completed >= self.args.episodes

    def seconds(self) -> float:
        """Seconds since this process started the run."""
        return timeit.default_timer() - self.start_time

    def transition(self) -> None:
        """Count one stored transition."""
        self.transitions += 1
        self.global_step += 1

    def record(self, result: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """A learning step's (loss, mean Q), logged by `write_learning`."""
        if result is not None:
            self.losses.append(result[0])
            self.q_values.append(result[1])

    def lost_episode(self, index: int) -> None:
        """One line, and a TensorBoard count, for an episode dropped with its lost environment worker."""
        self.lost_episodes += 1
        tqdm.write(
            f"Environment worker {index} was lost and replaced: its unfinished episode is dropped "
            f"({self.lost_episodes} so far)"
        )
        with stop_signals_deferred():
            self.writer.add_scalar("lost_episodes", self.lost_episodes, self.completed)

    def example_screen(self, frame: np.ndarray) -> None:
        """The lecture's "Example extracted screen": the first frame the network sees in this run, logged once."""
        if not self.example_logged:
            image = frame.reshape(-1, *frame.shape[-2:])  # a grayscale frame gets its one channel
            with stop_signals_deferred():
                self.writer.add_image("example_extracted_screen", image, self.completed, dataformats="CHW")
            self.example_logged = True

    def end_episode(self, reward: float, length: int, epsilon: float) -> int:
        """The lecture's end of an episode: log it, save the best model, check for solved; returns the episode's
        number (from 0). Stop signals wait until it is done, so that the log and the files agree."""
        with stop_signals_deferred():
            return self._end_episode(reward, length, epsilon)

    def _end_episode(self, reward: float, length: int, epsilon: float) -> int:
        args, writer, i_episode = self.args, self.writer, self.completed
        self.ten_rewards += reward
        self.total_rewards.append(float(reward))
        self.completed += 1
        self.mean_reward = mean_reward = float(np.mean(self.total_rewards[-100:]) * 100)
        steps_per_second = self.transitions / self.seconds()
        writer.add_scalar("epsilon", epsilon, i_episode)
        writer.add_scalar("success_rate_last_100", mean_reward, i_episode)
        writer.add_scalar("episode_length", length, i_episode)
        writer.add_scalar("steps_per_second", steps_per_second, i_episode)

        if (
            self.best_mean_reward is None or self.best_mean_reward < mean_reward
        ) and i_episode > BEST_MODEL_AFTER_EPISODE:
            save_checkpoint(args.checkpoint, {**self.networks(), "episode": i_episode, "mean_reward": mean_reward})
            if self.best_mean_reward is not None:
                tqdm.write(f"Best mean reward updated {self.best_mean_reward:.1f} -> {mean_reward:.1f}, model saved")
            self.best_mean_reward = mean_reward

        if (i_episode + 1) % 10 == 0:
            writer.add_scalar("ten episodes average rewards", self.ten_rewards / 10.0, i_episode)
            self.ten_rewards = 0.0

        self.progress.update(1)
        self.progress.set_postfix(eps=f"{epsilon:.3f}", success=f"{mean_reward:.1f}%", sps=f"{steps_per_second:.1f}")
        if i_episode >= SOLVE_AFTER_EPISODE and mean_reward > args.solve_score:
            self.solved = True
        return i_episode

    def write_learning(self, i_episode: int) -> None:
        """The mean loss and Q of the learning steps recorded since the last call (a refit's included), at
        episode `i_episode`; then now and then a clip of a greedy episode."""
        if self.losses:
            with stop_signals_deferred():
                self.writer.add_scalar("loss", torch.stack(self.losses).mean().item(), i_episode)
                self.writer.add_scalar("mean_q", torch.stack(self.q_values).mean().item(), i_episode)
            self.losses, self.q_values = [], []
        if self.args.clip_every and self.completed % self.args.clip_every == 0:
            self.log_greedy_episode()

    def log_greedy_episode(self) -> None:
        """An image strip of one greedy episode on test objects, played by a worker of its own.

        A separate process keeps the training environments' scenes and random draws as they were.
        """
        if self.clip_pool is None:
            self.clip_pool = ProcessEnvPool(
                1,
                self.clip_seed,
                is_test=True,
                max_steps=self.args.max_steps,
                camera_size=self.observation.camera_size,
                height=self.observation.height,
                overhead=self.observation.overhead,
            )
        recorder = record_greedy_episode(self.clip_pool, self.observation, self.greedy_policy())
        with stop_signals_deferred():
            self.writer.add_image(
                "greedy_episode_test_objects", recorder.strip(), self.completed - 1, dataformats="HWC"
            )

    def close(self) -> dict[str, Any]:
        """Stop the clip worker, flush the logs and return what a resumable state keeps of the log."""
        if self.clip_pool is not None:
            self.clip_pool.close()
        self.progress.close()
        self.writer.close()
        return {
            "episode": self.completed,
            "total_rewards": self.total_rewards[-100:],
            "best_mean_reward": self.best_mean_reward,
            "ten_rewards": self.ten_rewards,
            "global_step": self.global_step,
            "logdir": str(self.args.logdir),
            "elapsed_seconds": self.earlier_seconds + self.seconds(),
        }
