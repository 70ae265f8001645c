"""`Rollouts`: episodes played on the workers of an `EnvPool`, each worker stepping as soon as it has its action.

Training, evaluation, the throughput benchmark and the research probes all step their workers with it:

    rollouts = Rollouts(pool, Observation(), episodes=100)
    while not rollouts.finished:
        for step in rollouts.steps():      # the replies that have come in, in any order
            ...                            # step.state, step.action, step.reward, step.next_state, step.done
        rollouts.act(policy)               # one batched call for every worker waiting for an action
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from common import FrameStack, Observation
from grasping.pool import EnvPool

Policy = Callable[[np.ndarray, list[int], list[int]], list[int]]
"""Actions for a batch of uint8 states, given the indices of their environments and their timesteps (actions
taken in the episode so far)."""


@dataclass
class Step:
    """What one worker's reply means: an episode's start (`action` None) or a transition of it."""

    env: int
    """The worker."""
    episode: int
    """The episode's number: worker i plays episodes i, i + N, i + 2N, ... of a pool of N."""
    frame: np.ndarray | None
    """The preprocessed frame of the worker's camera image: the first of the episode, or the one after `action`
    (None when lost)."""
    state: np.ndarray | None
    """The stacked state `action` was taken in; None at the episode's start."""
    action: int | None
    reward: float
    next_state: np.ndarray | None
    """The state after `action` (at the start: the first state); None once the episode has ended."""
    done: bool
    actions: list[int] = field(default_factory=list)
    """The episode's actions so far, this one included: their count is the timestep."""
    lost: bool = False
    """The worker was lost mid-episode (a Ray actor whose node died) and replaced: the episode is played again
    from its start, and what it had stored of it is to be dropped."""


class Rollouts:
    """Episodes on every worker of `pool`, their camera images preprocessed for `observation` and stacked into
    states with `FrameStack`.

    Worker i plays episodes i, i + N, i + 2N, ... up to `episodes` (None: without end), so a seed gives
    each episode number the same scene whichever worker answers first. Between `steps` and `act` no
    reply is due from the workers that replied, so `EnvPool.call` may ask them about their environment:
    `act` gives the workers whose episode goes on their action, and starts the next episode in those
    whose episode ended, calling `before_reset(worker)` first if given (where `EnvPool.call` may set up the
    worker's next scene).
    """

    def __init__(
        self,
        pool: EnvPool,
        observation: Observation,
        episodes: int | None = None,
        before_reset: Callable[[int], None] | None = None,
    ) -> None:
        self.pool, self.observation, self.remaining, self.before_reset = pool, observation, episodes, before_reset
        n = pool.num_envs
        self.queues: list[Iterator[int]] = [
            iter(range(index, episodes, n)) if episodes is not None else itertools.count(index, n) for index in range(n)
        ]
        self.stacks = [FrameStack() for _ in range(n)]
        self.playing: list[int | None] = [None] * n
        self.states: list[np.ndarray | None] = [None] * n
        self.actions: list[list[int]] = [[] for _ in range(n)]
        self.waiting: list[int] = []
        """Workers with a state that has no action yet."""
        self.ended: list[int] = list(range(n))
        """Workers whose episode has ended (or not begun), to start on their next."""
        self._start_ended()

    @property
    def finished(self) -> bool:
        """Every episode has been played (never, without an end)."""
        return self.remaining == 0

    def steps(self) -> list[Step]:
        """Block until some worker replies; every reply that has come in, as a `Step`."""
        steps = []
        for index, obs, reward, done in self.pool.results():
            episode, state = self.playing[index], self.states[index]
            if episode is None:
                raise RuntimeError(f"worker {index} replied while it plays no episode")
            if obs is None:  # the worker was replaced: its episode starts again, with the same number
                steps.append(Step(index, episode, None, state, None, 0.0, None, False, self.actions[index], lost=True))
                if index in self.waiting:
                    self.waiting.remove(index)
                self.states[index], self.actions[index] = None, []
                self._reset(index)
                continue
            frame = self.observation.preprocess(obs)
            if state is None:  # the first frame of an episode
                self.states[index] = self.stacks[index].reset(frame)
                steps.append(Step(index, episode, frame, None, None, 0.0, self.states[index], False))
                self.waiting.append(index)
                continue
            next_state = None if done else self.stacks[index].push(frame)
            action = self.actions[index][-1]
            steps.append(Step(index, episode, frame, state, action, reward, next_state, done, self.actions[index]))
            self.states[index] = next_state
            if done:
                self.ended.append(index)
                if self.remaining is not None:
                    self.remaining -= 1
            else:
                self.waiting.append(index)
        return steps

    def act(self, policy: Policy) -> None:
        """Actions for every waiting worker from one call of `policy`, sent to them; the next episodes started."""
        if self.waiting:
            waiting, self.waiting = self.waiting, []
            states = np.stack([state for i in waiting if (state := self.states[i]) is not None])
            chosen = policy(states, waiting, [len(self.actions[i]) for i in waiting])
            for index, action in zip(waiting, chosen):
                self.actions[index].append(int(action))
                self.pool.step(index, action)
        self._start_ended()

    def _start_ended(self) -> None:
        for index in self.ended:
            self.playing[index] = next(self.queues[index], None)
            self.states[index], self.actions[index] = None, []
            if self.playing[index] is not None:
                self._reset(index)
        self.ended = []

    def _reset(self, index: int) -> None:
        if self.before_reset is not None:
            self.before_reset(index)
        self.pool.reset(index)
