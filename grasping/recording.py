"""Recording played episodes: an animated GIF for people, an image strip for TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common import ACTION_NAMES, Observation
from grasping.checkpoints import atomic_write
from grasping.pool import EnvPool
from grasping.rollouts import Policy, Rollouts


class EpisodeRecorder:
    """Frames of played episodes for a GIF or an image strip: the scene beside the network's view, captioned.

    Each frame puts a `size` x `size` render of the scene next to the frame the network sees
    (enlarged, nearest neighbour), with the episode, the step, the action just taken
    and, at the end, the outcome written under it. An episode gives one frame per step plus the first.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.line_height = max(12, size // 16)
        self.font = ImageFont.load_default(size=self.line_height - 2)
        self.frames: list[Image.Image] = []
        self.episode_ends: list[int] = []  # index of each episode's last frame
        self.episode = 0

    def start(self, scene: np.ndarray, screen: np.ndarray) -> None:
        """The first frame of a new episode, as the environment was reset."""
        self.episode += 1
        self._add(scene, screen, [f"episode {self.episode}, step 0", "start"])

    def step(self, scene: np.ndarray, screen: np.ndarray, step: int, action: int, reward: float, done: bool) -> None:
        """The frame after action `action` of step `step`; the last one of an episode says how it ended."""
        lines = [f"episode {self.episode}, step {step}", f"action {action}: {ACTION_NAMES[action]}"]
        if done:
            lines.append("success: object lifted" if reward > 0 else "failure: nothing lifted")
            self.episode_ends.append(len(self.frames))
        self._add(scene, screen, lines)

    def _add(self, scene: np.ndarray, screen: np.ndarray, lines: list[str]) -> None:
        size, line_height = self.size, self.line_height
        frame = Image.new("RGB", (2 * size, size), "black")
        frame.paste(Image.fromarray(scene).resize((size, size), Image.Resampling.BILINEAR), (0, 0))
        side = screen.shape[-1]
        scale = max(1, (size - 3 * line_height - 8) // side)
        view = Image.fromarray(screen if screen.ndim == 2 else screen.transpose(1, 2, 0))
        view = view.resize((side * scale, side * scale), Image.Resampling.NEAREST)
        left = size + (size - view.width) // 2
        frame.paste(view.convert("RGB"), (left, 4))
        draw = ImageDraw.Draw(frame)
        for row, line in enumerate(lines):
            draw.text((left, view.height + 6 + row * line_height), line, fill="white", font=self.font)
        self.frames.append(frame)

    def save_gif(self, path: Path, frame_ms: int = 400, end_ms: int = 1500) -> None:
        """Write the frames as a looping GIF, holding each episode's last frame longer; atomically."""
        if not self.frames:
            raise ValueError("no frames recorded")
        ends = set(self.episode_ends)
        durations = [end_ms if index in ends else frame_ms for index in range(len(self.frames))]
        with atomic_write(Path(path)) as handle:
            self.frames[0].save(
                handle, format="GIF", save_all=True, append_images=self.frames[1:], duration=durations, loop=0
            )

    def strip(self) -> np.ndarray:
        """All frames side by side as one RGB image (H, W, 3), for TensorBoard."""
        return np.concatenate([np.asarray(frame) for frame in self.frames], axis=1)


def record_greedy_episode(pool: EnvPool, observation: Observation, policy: Policy) -> EpisodeRecorder:
    """One episode of `policy` in worker 0 of `pool`, the scene recorded at 192x192 beside the network's frames."""
    recorder = EpisodeRecorder(size=192)
    rollouts = Rollouts(pool, observation, episodes=1)
    while not rollouts.finished:
        for step in rollouts.steps():  # each scene is drawn before the worker is given its next action
            if step.frame is None:  # a lost worker: its episode starts again
                continue
            if step.action is None:
                recorder.start(pool.scene(0, recorder.size), step.frame)
            else:
                recorder.step(
                    pool.scene(0, recorder.size), step.frame, len(step.actions), step.action, step.reward, step.done
                )
        rollouts.act(policy)
    return recorder
