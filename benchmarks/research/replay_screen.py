"""Learning-side ideas for the pose agent, screened on a run's own replay: refit each variant on the episodes the
run saved and play it greedily on the benchmark's test scenes.

    python benchmarks/research/replay_screen.py pose-height plain ensemble3 --eval-episodes 100

The run is a configuration of benchmarks/learning.py (its resumable state holds the replay). Variants:
  plain:      one refit of the run's network, as the agent refits (fresh weights, 10 passes, batches of 32, Adam at
              1e-3);
  ensembleK:  K plain refits of seeds SEED .. SEED + K - 1, their logits averaged;
  baggedK:    the same, each refit on its own bootstrap resample of the replay (as many episodes, drawn with
              replacement): members that differ by their data, not only by their initial weights;
  passesN:    one refit of N passes;
  jitterM:    one plain refit with each batch's final poses moved by up to M mm in x and y (uniform, drawn anew per
              batch), the labels kept: a translation the gripper's tolerance should forgive;
  colour:     one plain refit with each frame's colour channels shuffled and scaled by 0.8-1.2 (anew per frame and
              batch), the height channel kept: the test objects are other shapes in other colours, and a grasp
              depends on the shape;
  wide:       one plain refit of a network twice as wide (convolutions of 64, 128 and 128 channels, 512 hidden);
  contextK:   one plain refit of a network that also sees 2, 4, ... 2^(K-1) times the patch's width around the pose,
              each at the patch's number of samples, as more channels: the clutter the descending gripper meets
              (context: K = 2);
  angles:     one plain refit of the run's network whose convolutions also take the gripper's angle as two constant
              channels (sin 2a, cos 2a): features of the clutter that depend on how the fingers close;
  anglefree:  the same refit given every pose at angle 0: what the angle is worth to the network;
  finecentre: one plain refit of the run's network with one more patch in front of its own, half as wide: the
              centre sampled twice as finely, between the frame's pixels;
  footprint:  one plain refit of the run's network with a crop in the gripper's frame beside its patches
              (FootprintNet): the objects' height plane around the pose, turned with the gripper's angle in the
              world and projected into the frame, so that the fingers' footprint lies at the same samples;
  scene:      one plain refit of a fully convolutional network instead (SceneScorerNet): the whole frame through
              an encoder-decoder once, every final pose scored from the feature maps read at its pixel;
  plain+scene: the plain refit and the scene refit, their logits averaged: two networks that err on other scenes;
  decayN:     one plain refit with AdamW's decoupled weight decay of N/100 (decay1: AdamW's default, 0.01);
  dropoutP:   one plain refit with P% of the convolutions' features dropped in training (before the hidden layer);
  cosineN:    one refit of N passes whose learning rate falls from 1e-3 to 0 along a half cosine, batch by batch: the
              last weights an average of small steps rather than the last of large ones.
Each is played greedily on the first --eval-episodes of the benchmark's 200 test scenes (`--eval-seed 1000`, 2
workers), as learning.py plays them, or on others (another --eval-seed); the same scenes for every variant, so each
is also compared scene by scene with the first (scenes won and lost). With --join, the refits take other runs'
replays of the same configuration too: what more episodes would give. Appends to
benchmarks/results/replay-screen/screen.csv.
"""

from __future__ import annotations

import csv
import math
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.learning import ROOT
from benchmarks.research.choice_screen import Ensemble, play_test_scenes, scenes_won_lost
from common import Observation
from grasping.camera import camera_matrix
from grasping.checkpoints import load_checkpoint, observation_of, resume_path
from grasping.cli import OneLineArgumentParser, positive_int
from grasping.kinematics import angle_features
from grasping.pose_agent import (
    OBJECT_HEIGHT,
    EpisodeMemory,
    GraspNet,
    PoseAgent,
    PoseLattice,
    PosePolicy,
    image_coordinates,
    pose_config,
    pose_coordinates,
)
from grasping.stats import success_rate


class JitteredMemory(EpisodeMemory):
    """The episode memory whose batches have their final poses moved by up to `jitter_mm` in x and y (uniform,
    drawn anew for every batch), the labels kept."""

    jitter_mm = 0.0

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frames, poses, rewards = super().rows(rows)
        shift = (torch.rand(len(poses), 1, 2) * 2 - 1) * self.jitter_mm * 1e-3
        return frames, torch.cat((poses[..., :2] + shift, poses[..., 2:]), dim=-1), rewards


class RecolouredMemory(EpisodeMemory):
    """The episode memory whose frames have their colour channels shuffled and scaled by 0.8-1.2, anew per frame and
    batch; a height channel is kept as it is."""

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frames, poses, rewards = super().rows(rows)
        order = torch.argsort(torch.rand(len(frames), 3), dim=1)[:, :, None, None].expand(-1, -1, *frames.shape[2:])
        colours = torch.gather(frames[:, :3], 1, order) * (0.8 + 0.4 * torch.rand(len(frames), 1, 1, 1))
        return torch.cat((colours.clamp(0, 1), frames[:, 3:]), dim=1), poses, rewards


class WideGraspNet(GraspNet):
    """GraspNet with twice the channels in every layer."""

    def __init__(self, image_size: int = 96, rgb: bool = True, height: bool = False) -> None:
        super().__init__(image_size, rgb, height)
        self.conv1 = nn.Conv2d(self.conv1.in_channels, 64, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(128, 128, kernel_size=3, padding=1)
        self.linear = nn.Linear(128 * (self.patch // 8) ** 2 + 2, 512)
        self.head = nn.Linear(512, 1)


class AngleChannelsNet(GraspNet):
    """GraspNet whose convolutions also see the gripper's angle, as two constant channels (sin 2a, cos 2a) beside
    the patches, so that what they pick out of the clutter can depend on how the fingers will close; each pose then
    goes through the convolutions on its own."""

    def __init__(self, image_size: int = 96, rgb: bool = True, height: bool = False, patch_scales: int = 1) -> None:
        super().__init__(image_size, rgb, height, patch_scales)
        self.conv1 = nn.Conv2d(self.conv1.in_channels + 2, 32, kernel_size=5, padding=2)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        b, p = poses.shape[:2]
        flat = poses.reshape(-1, 3)
        frame_of = torch.arange(b, device=poses.device).repeat_interleave(p).to(poses.dtype)
        rows, inverse = torch.unique(torch.cat((frame_of[:, None], flat[:, :2]), dim=1), dim=0, return_inverse=True)
        angles = angle_features(flat[:, 2])
        planes = angles[:, :, None, None].expand(-1, -1, self.patch, self.patch)
        x = self.encode(torch.cat((self.patches(frames[rows[:, 0].long()], rows[:, 1:])[inverse], planes), dim=1))
        x = torch.cat((x, angles), dim=1)
        return self.head(F.relu(self.linear(x))).reshape(b, p)


class FineCentreNet(GraspNet):
    """GraspNet of the run's patches with one more in front: the same samples half as wide, so that the centre the
    fingers close on is sampled twice as finely (bilinearly, between the frame's pixels)."""

    def __init__(self, image_size: int = 96, rgb: bool = True, height: bool = False, patch_scales: int = 1) -> None:
        super().__init__(image_size, rgb, height, patch_scales + 1)
        self.offsets = self.offsets / 2  # GraspNet.patches' scales 1, 2, 4, ... become 1/2, 1, 2, ...


class AngleBlindNet(GraspNet):
    """GraspNet that is given every pose at angle 0: what the network makes of the angle, by its absence."""

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        return super().forward(frames, torch.cat((poses[..., :2], torch.zeros_like(poses[..., 2:])), dim=-1))


class FootprintNet(GraspNet):
    """GraspNet with a second input beside its patches: the frame sampled at FOOTPRINT x FOOTPRINT points of the
    objects' height plane, FOOTPRINT_SPAN metres square around the pose and turned with the gripper's angle in the
    world, so that where the fingers land lies at the same samples whatever the angle. The patches, in the image's
    axes, keep the side the arm comes from; the turned crop adds the fingers' footprint. Each pose's crop goes
    through two convolutions of its own."""

    FOOTPRINT = 16
    FOOTPRINT_SPAN = 0.12

    def __init__(self, image_size: int = 96, rgb: bool = True, height: bool = False, patch_scales: int = 1) -> None:
        super().__init__(image_size, rgb, height, patch_scales)
        channels = (3 if rgb else 1) + height
        self.foot1 = nn.Conv2d(channels, 32, kernel_size=3, padding=1)
        self.foot2 = nn.Conv2d(32, 32, kernel_size=3, padding=1)
        side = self.FOOTPRINT // 4
        self.linear = nn.Linear(64 * (self.patch // 8) ** 2 + 32 * side * side + 2, 256)
        steps = (torch.arange(self.FOOTPRINT, dtype=torch.float32) + 0.5) / self.FOOTPRINT - 0.5
        self.grid: torch.Tensor
        self.register_buffer(
            "grid", torch.stack(torch.meshgrid(steps, steps, indexing="xy"), -1) * self.FOOTPRINT_SPAN, persistent=False
        )

    def footprints(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Float frames (B, C, H, W) and poses (B, P, 3) -> each pose's crop in the gripper's frame,
        (B * P, C, FOOTPRINT, FOOTPRINT)."""
        b, p = poses.shape[:2]
        cos, sin = (f(poses[..., 2])[..., None, None] for f in (torch.cos, torch.sin))
        u, v = self.grid[..., 0], self.grid[..., 1]
        x = poses[..., 0, None, None] + cos * u - sin * v
        y = poses[..., 1, None, None] + sin * u + cos * v
        points = torch.stack((x, y, torch.full_like(x, OBJECT_HEIGHT)), dim=-1)  # (B, P, S, S, 3)
        grid = image_coordinates(points, self.camera).reshape(b, p * self.FOOTPRINT, self.FOOTPRINT, 2)
        crops = F.grid_sample(frames, grid, align_corners=False)  # (B, C, P * S, S)
        crops = crops.reshape(b, -1, p, self.FOOTPRINT, self.FOOTPRINT).transpose(1, 2)
        return crops.reshape(b * p, -1, self.FOOTPRINT, self.FOOTPRINT)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        b, p = poses.shape[:2]
        foot = F.max_pool2d(F.relu(self.foot1(self.footprints(frames, poses))), 2)
        foot = F.max_pool2d(F.relu(self.foot2(foot)), 2).flatten(start_dim=1)
        x = torch.cat((self.patch_features(frames, poses), foot, angle_features(poses[..., 2].reshape(-1))), dim=1)
        return self.head(F.relu(self.linear(x))).reshape(b, p)


class SceneScorerNet(nn.Module):
    """A fully convolutional grasp network: the whole first frame goes through an encoder-decoder once, and each
    final pose is scored from the feature maps read (bilinearly) at its pixel, at the objects' height, with its
    angle. Every pose of a scene shares one pass over the scene, and a label moves the features its neighbours are
    read from; fine features (1/2 and 1/4 of the frame's resolution) and coarse ones (1/8, the clutter around) are
    read alike. Frames (B, C, H, W) and poses (B, P, 3) -> logits (B, P), as GraspNet."""

    def __init__(self, image_size: int = 96, rgb: bool = True, height: bool = False) -> None:
        super().__init__()
        channels = (3 if rgb else 1) + height
        self.camera: torch.Tensor
        self.register_buffer("camera", torch.from_numpy(camera_matrix(False)).float(), persistent=False)
        self.enc1 = nn.Conv2d(channels, 32, kernel_size=5, stride=2, padding=2)  # 1/2
        self.enc2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)  # 1/4
        self.enc3 = nn.Conv2d(64, 64, kernel_size=3, padding=1)  # 1/8
        self.enc4 = nn.Conv2d(64, 128, kernel_size=3, padding=1)  # 1/8, wider context
        self.dec = nn.Conv2d(128 + 64, 64, kernel_size=3, padding=1)  # 1/4: coarse features brought up to enc2's
        self.linear = nn.Linear(32 + 64 + 128 + 2, 256)
        self.head = nn.Linear(256, 1)

    def forward(self, frames: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        b, p = poses.shape[:2]
        half = F.relu(self.enc1(frames))
        quarter = F.relu(self.enc2(F.max_pool2d(half, 2)))
        eighth = F.relu(self.enc3(F.max_pool2d(quarter, 2)))
        coarse = F.relu(self.enc4(eighth))
        up = F.interpolate(coarse, size=quarter.shape[-2:], mode="bilinear", align_corners=False)
        fine = F.relu(self.dec(torch.cat((up, quarter), dim=1)))
        grid = pose_coordinates(poses[..., :2], self.camera)[:, :, None, :]  # (B, P, 1, 2)
        read = [F.grid_sample(m, grid, align_corners=False)[..., 0] for m in (half, fine, coarse)]  # each (B, C, P)
        x = torch.cat((*read, angle_features(poses[..., 2].reshape(b, p)).permute(0, 2, 1)), dim=1)
        return self.head(F.relu(self.linear(x.permute(0, 2, 1)))).reshape(b, p)


class CosineAdam(torch.optim.Adam):
    """Adam whose learning rate falls from `lr` to 0 along a half cosine over `steps` steps."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, steps: int) -> None:
        super().__init__(params, lr=lr)
        self.start, self.steps, self.taken = lr, steps, 0

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        self.taken += 1
        for group in self.param_groups:
            group["lr"] = self.start * 0.5 * (1 + math.cos(math.pi * self.taken / self.steps))
        return loss


def refit(
    state: dict,
    observation: Observation,
    seed: int,
    passes: int = 10,
    jitter_mm: float = 0.0,
    recolour: bool = False,
    net: GraspNet | None = None,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    bootstrap: bool = False,
    cosine: bool = False,
) -> nn.Module:
    """A fresh grasp network of the run's configuration refit on its replay, as `PoseAgent.refit` does it; with
    `jitter_mm`, each batch's poses moved by up to that many millimetres in x and y; with `recolour`, its frames
    recoloured; `net`, another network than the agent's to refit (its weights are drawn afresh); `weight_decay`,
    AdamW's decay instead of Adam; `dropout`, that fraction of the convolutions' features dropped in training;
    `bootstrap`, refit on a resample of the replay drawn with replacement; `cosine`, the learning rate decayed to 0
    along a half cosine."""
    memory = state["replay_memory"]
    scales = state["config"]["patch_scales"]
    agent = PoseAgent(
        observation, torch.device("cpu"), seed, 1e-3, len(memory["rewards"]), 32, 0, 1, passes, patch_scales=scales
    )
    if net is not None:
        agent.net, agent.optimizer = net, torch.optim.Adam(net.parameters(), lr=1e-3)
    if dropout:
        agent.net.linear = nn.Sequential(nn.Dropout(dropout), agent.net.linear)  # type: ignore[assignment]
    if weight_decay:
        agent.optimizer = torch.optim.AdamW(agent.net.parameters(), lr=1e-3, weight_decay=weight_decay)
    if cosine:
        agent.optimizer = CosineAdam(agent.net.parameters(), 1e-3, passes * math.ceil(len(memory["rewards"]) / 32))
    if recolour:
        agent.memory = RecolouredMemory(len(memory["rewards"]), observation.frame_shape, "cpu", seed)
    if jitter_mm:
        jittered = JitteredMemory(len(memory["rewards"]), observation.frame_shape, "cpu", seed)
        jittered.jitter_mm = jitter_mm
        agent.memory = jittered
    if bootstrap:
        rows = torch.from_numpy(np.random.default_rng(seed).integers(0, len(memory["rewards"]), len(memory["rewards"])))
        memory = {**memory, **{key: memory[key][rows] for key in ("frames", "poses", "rewards")}}
    agent.memory.load_state_dict(memory)
    torch.manual_seed(seed)
    agent.refit()
    return agent.net.eval()


def variant_net(name: str, state: dict, observation: Observation, seed: int) -> nn.Module:
    if name == "plain":
        return refit(state, observation, seed)
    if match := re.fullmatch(r"ensemble(\d+)", name):
        return Ensemble([refit(state, observation, seed + k) for k in range(int(match[1]))]).eval()
    if match := re.fullmatch(r"bagged(\d+)", name):
        members = [refit(state, observation, seed + k, bootstrap=True) for k in range(int(match[1]))]
        return Ensemble(members).eval()
    if match := re.fullmatch(r"passes(\d+)", name):
        return refit(state, observation, seed, passes=int(match[1]))
    if name == "colour":
        return refit(state, observation, seed, recolour=True)
    if observation.overhead and re.fullmatch(
        r"wide|context\d*|angles|anglefree|finecentre|footprint|(plain\+)?scene", name
    ):
        raise SystemExit(f"error: variant {name!r} builds its network on the environment's camera, not --overhead")
    if name == "wide":
        return refit(state, observation, seed, net=WideGraspNet(observation.size, observation.rgb, observation.height))
    if match := re.fullmatch(r"context(\d*)", name):
        scales = GraspNet(observation.size, observation.rgb, observation.height, int(match[1] or 2))
        return refit(state, observation, seed, net=scales)
    if name in ("angles", "anglefree", "finecentre", "footprint"):
        kind = {
            "angles": AngleChannelsNet,
            "anglefree": AngleBlindNet,
            "finecentre": FineCentreNet,
            "footprint": FootprintNet,
        }[name]
        scales = state["config"]["patch_scales"]
        return refit(state, observation, seed, net=kind(observation.size, observation.rgb, observation.height, scales))
    if name in ("scene", "plain+scene"):
        net = SceneScorerNet(observation.size, observation.rgb, observation.height)
        scene = refit(state, observation, seed, net=cast(GraspNet, net))
        return scene if name == "scene" else Ensemble([refit(state, observation, seed), scene]).eval()
    if match := re.fullmatch(r"jitter(\d+)", name):
        return refit(state, observation, seed, jitter_mm=float(match[1]))
    if match := re.fullmatch(r"decay(\d+)", name):
        return refit(state, observation, seed, weight_decay=int(match[1]) / 100)
    if match := re.fullmatch(r"dropout(\d+)", name):
        return refit(state, observation, seed, dropout=int(match[1]) / 100)
    if match := re.fullmatch(r"cosine(\d+)", name):
        return refit(state, observation, seed, passes=int(match[1]), cosine=True)
    raise SystemExit(
        f"error: variant {name!r}: not plain, ensembleK, baggedK, passesN, jitterM, colour, wide, contextK, angles, "
        "anglefree, finecentre, footprint, scene, plain+scene, decayN, dropoutP or cosineN"
    )


def main(argv: list[str]) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a configuration's folder under benchmarks/results")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--eval-episodes", type=positive_int, default=100, help="greedy test scenes per variant")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the test scenes (the benchmark's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the refits' weights and order")
    parser.add_argument(
        "--first",
        type=positive_int,
        help="refit on the replay's first FIRST episodes only: the replay as it stood then (the memory keeps the "
        "order episodes came in until it is full)",
    )
    parser.add_argument(
        "--join",
        nargs="+",
        default=[],
        metavar="OTHER",
        help="refit on these runs' replays too (the same configuration): more episodes than one run collects",
    )
    args = parser.parse_args(argv)
    if args.first and args.join:
        parser.error("argument --join: not with --first")
    path = resume_path(ROOT / "benchmarks/results" / args.run / "policy_dqn.pt")
    state = load_checkpoint(path, torch.device("cpu"), ("replay_memory",))
    for other in args.join:
        joined = resume_path(ROOT / "benchmarks/results" / other / "policy_dqn.pt")
        extra = load_checkpoint(joined, torch.device("cpu"), ("replay_memory",))
        if pose_config(extra, joined) != pose_config(state, path):
            raise SystemExit(f"error: --join {other}: its configuration is not {args.run}'s")
        memory = state["replay_memory"]
        for key in ("frames", "poses", "rewards"):
            memory[key] = torch.cat((memory[key], extra["replay_memory"][key]))
        memory["pushed"] = len(memory["rewards"])
        state["episode"] += extra["episode"]
    if args.first:
        memory = state["replay_memory"]
        if memory["pushed"] > len(memory["rewards"]) or args.first > len(memory["rewards"]):
            raise SystemExit(f"error: --first {args.first}: the replay of {path} does not hold its first episodes")
        for key in ("frames", "poses", "rewards"):
            memory[key] = memory[key][: args.first]
        memory["pushed"] = state["episode"] = args.first
    config = state["config"] = pose_config(state, path)  # an older checkpoint's config completed: patch_scales 1
    observation = observation_of(config)
    torch.set_num_threads(1)
    out = ROOT / "benchmarks/results/replay-screen"
    out.mkdir(exist_ok=True)
    outcomes: dict[str, list[float]] = {}
    for name in args.variants:
        started = time.time()
        net = variant_net(name, state, observation, args.seed)
        fitted = time.time() - started
        policy = PosePolicy(cast(GraspNet, net), PoseLattice())
        rewards = play_test_scenes(policy, observation, args.eval_episodes, args.eval_seed)
        successes, episodes = int(sum(rewards)), len(rewards)
        outcomes[name] = rewards
        won, lost = scenes_won_lost(rewards, outcomes[args.variants[0]])
        print(
            f"{name}: {state['episode']} episodes, fit {fitted:.0f} s, {success_rate(successes, episodes)}, "
            f"against {args.variants[0]} {won} scenes won and {lost} lost",
            flush=True,
        )
        new = not (out / "screen.csv").exists()
        with open(out / "screen.csv", "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["run", "episodes", "variant", "seed", "successes", "eval_episodes", "eval_seed"])
            writer.writerow(
                [
                    "+".join((args.run, *args.join)),
                    state["episode"],
                    name,
                    args.seed,
                    successes,
                    episodes,
                    args.eval_seed,
                ]
            )


if __name__ == "__main__":
    main(sys.argv[1:])
