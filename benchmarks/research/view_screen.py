"""Which view of the tray tells the pose agent's grasps apart best? A screen on one dataset.

    python benchmarks/research/view_screen.py collect --episodes 1200          # uniform final poses, training objects
    python benchmarks/research/view_screen.py screen rgb rgbd map --eval-episodes 100

`collect` plays episodes that each head for a final pose drawn uniformly from the 512 the pose agent
scores (its exploration), on training objects, and keeps per episode: the first frame at 96x96 RGB,
the height of what each of its pixels shows (the depth buffer of the same camera unprojected, mm
above FLOOR_Z), a top-down map of the tray's colour and height (MAP_CELL cells over MAP_X x MAP_Y,
reprojected from the same camera rendered at MAP_RENDER pixels), the same map from a second camera
straight above the tray with the arm out of view (`--overhead`, rendered at OVERHEAD_RENDER pixels),
the final commanded pose and the reward. A later call appends to OUT/episodes.npz.

`screen` refits a grasp network per view on those episodes, as the agent refits (fresh weights, 10
passes, batches of 32, Adam at 1e-3), and plays it greedily on the benchmark's test scenes
(`--eval-seed 1000`, 2 workers, the first `--eval-episodes` of its 200):
  rgb:      the agent's GraspNet on the oblique colour frame;
  rgbd:     the same with the height image as a fourth channel;
  map:      a 40x40-cell crop of the top-down map (colour and height) centred on the pose and turned by
            the gripper's angle, flipped at random in training (the gripper's two mirror symmetries);
  overhead: the same crop of the overhead camera's map: the tray without the oblique camera's occlusion;
  map-fixed, overhead-fixed: the same maps' crops not turned (rows along x, as the map's) and not
            flipped: what the gripper's frame and its symmetries do to the map's networks.
A digit K after a view's name (rgbd2, map2, overhead2) adds K - 1 wider crops of the same samples
around the pose, 2, 4, ... times as wide, as more channels: the agent's --patch-scales.
Writes OUT/screen.csv, one row per view: episodes trained on, successes, the 95% interval.
"""

from __future__ import annotations

import csv
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.learning import ROOT
from common import Observation
from grasping.camera import MAP_CELL, MAP_X, MAP_Y, camera_matrix, heights, topdown_map, unproject
from grasping.cli import OneLineArgumentParser, positive_int
from grasping.environment import camera_with_depth
from grasping.kinematics import EpisodeTracker, pose_array
from grasping.pose_agent import GraspNet, PoseLattice
from grasping.process_pool import ProcessEnvPool
from grasping.rollouts import Rollouts
from grasping.stats import success_rate

MAP_RENDER = 256
"""Side of the camera image the map is reprojected from."""
OVERHEAD_RENDER = 192
"""Side of the overhead camera's image its map is reprojected from (97% of the cells seen, the rest filled)."""
CROP = 40
"""Side of a map crop in cells (16 cm)."""
OBLIQUE = 96


def views(pool: ProcessEnvPool, index: int, frame: np.ndarray) -> dict[str, np.ndarray]:
    """Worker `index`'s first frame (3, 96, 96) and what it renders now: the height image and the two maps."""
    _, depth = pool.call(index, camera_with_depth, OBLIQUE)
    rgb_big, depth_big = pool.call(index, camera_with_depth, MAP_RENDER)
    rgb_above, depth_above = pool.call(index, camera_with_depth, OVERHEAD_RENDER, None, True)
    return {
        "rgb": frame,
        "height": heights(unproject(depth)[..., 2])[None],
        "map": topdown_map(rgb_big, depth_big),
        "overhead": topdown_map(rgb_above, depth_above, matrix=camera_matrix(overhead=True)),
    }


# ---------------------------------------------------------------------------------------------------------------
# Networks: each maps (views as float tensors, poses (B, P, 3)) -> logits (B, P)


VIEWS = ("rgb", "rgbd", "map", "overhead", "map-fixed", "overhead-fixed")


def parse_view(name: str) -> tuple[str, int]:
    """A screen's view name -> (view, crop scales): "map2" -> ("map", 2), "rgbd" -> ("rgbd", 1)."""
    view, scales = name.rstrip("0123456789"), name[len(name.rstrip("0123456789")) :]
    if view not in VIEWS or (scales and not 1 <= int(scales) <= 3):
        raise ValueError(f"no view {name!r}: one of {VIEWS}, optionally followed by 2 or 3")
    return view, int(scales or 1)


def image_input(batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    view, _ = parse_view(name)
    if view == "rgb":
        return batch["rgb"]
    if view == "rgbd":
        return torch.cat((batch["rgb"], batch["height"]), dim=1)
    return batch[view.removesuffix("-fixed")]


class MapNet(nn.Module):
    """Crops of the top-down map in the gripper's frame: CROP x CROP cells around (x, y), turned by the angle, and
    with `scales` K above 1, K - 1 more of the same samples 2, 4, ... times as wide, as more channels. Unless `turn`,
    the crops keep the map's axes whatever the angle."""

    def __init__(self, scales: int = 1, turn: bool = True) -> None:
        super().__init__()
        self.scales, self.turn = scales, turn
        half = (torch.arange(CROP, dtype=torch.float32) - (CROP - 1) / 2) * MAP_CELL
        u, v = torch.meshgrid(half, half, indexing="ij")
        self.u: torch.Tensor
        self.v: torch.Tensor
        self.register_buffer("u", u, persistent=False)
        self.register_buffer("v", v, persistent=False)
        self.conv1 = nn.Conv2d(4 * scales, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.linear = nn.Linear(64 * (CROP // 8) ** 2 + 2, 256)
        self.head = nn.Linear(256, 1)
        self.flip = False

    def crops(self, maps: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Maps (B, 4, R, C) and poses (B, P, 3) -> crops (B * P, 4 * scales, CROP, CROP), the narrowest first; u
        runs along the fingers' closing axis, which points to (cos a, -sin a) in the world for a commanded angle a."""
        b, p = poses.shape[:2]
        x, y, a = (poses[..., k].reshape(-1, 1, 1) for k in range(3))
        cos, sin = (torch.cos(a), torch.sin(a)) if self.turn else (torch.ones_like(a), torch.zeros_like(a))
        source = maps.repeat_interleave(p, dim=0)
        crops = []
        for k in range(self.scales):
            u, v = 2**k * self.u, 2**k * self.v
            wx = x + u * cos + v * sin
            wy = y - u * sin + v * cos
            gx = (wy - MAP_Y[0]) / (MAP_Y[1] - MAP_Y[0]) * 2 - 1
            gy = (wx - MAP_X[0]) / (MAP_X[1] - MAP_X[0]) * 2 - 1
            crops.append(F.grid_sample(source, torch.stack((gx, gy), dim=-1), align_corners=False))
        return torch.cat(crops, dim=1)

    def forward(self, maps: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        b, p = poses.shape[:2]
        x = self.crops(maps, poses)
        if self.training and self.flip:
            flips = torch.rand(len(x), 2) < 0.5
            x = torch.where(flips[:, 0, None, None, None], x.flip(2), x)
            x = torch.where(flips[:, 1, None, None, None], x.flip(3), x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        angle = poses[..., 2].reshape(-1)
        x = torch.cat((x.flatten(start_dim=1), torch.stack((torch.sin(2 * angle), torch.cos(2 * angle)), 1)), 1)
        return self.head(F.relu(self.linear(x))).reshape(b, p)


def make_net(name: str) -> nn.Module:
    view, scales = parse_view(name)
    if view not in ("rgb", "rgbd"):
        net = MapNet(scales, turn=not view.endswith("-fixed"))
        net.flip = net.turn
        return net
    return GraspNet(OBLIQUE, rgb=True, height=view == "rgbd", patch_scales=scales)


def as_float(data: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(data[key][rows]).float().div_(255.0) for key in ("rgb", "height", "map", "overhead")}


def refit(view: str, data: dict[str, np.ndarray], seed: int, passes: int = 10, batch_size: int = 32) -> nn.Module:
    """A fresh network of `view` after `passes` over every episode in random order, as the agent refits."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = make_net(view)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(passes):
        order = rng.permutation(len(data["reward"]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            logits = net(image_input(as_float(data, rows), view), torch.from_numpy(data["pose"][rows])[:, None])
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(data["reward"][rows])[:, None])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    return net


# ---------------------------------------------------------------------------------------------------------------
# Playing: each episode heads for one final pose, chosen on its first views


def play(
    episodes: int, seed: int, is_test: bool, choose: Callable[[dict[str, np.ndarray]], int], collect: bool = False
) -> tuple[list[float], dict[str, list]]:
    """Play `episodes` episodes on 2 workers; `choose(views)` gives each episode's final pose (a lattice index).
    Returns the rewards in episode order and, with `collect`, each episode's views, final pose and reward."""
    lattice = PoseLattice()
    tracker = EpisodeTracker()
    targets: dict[int, np.ndarray] = {}
    rewards: dict[int, float] = {}
    kept: dict[int, dict] = {}
    episode_views: dict[int, dict] = {}
    with ProcessEnvPool(2, seed, is_test=is_test, camera_size=OBLIQUE) as pool:
        rollouts = Rollouts(pool, Observation(OBLIQUE, rgb=True), episodes)
        done = 0
        while not rollouts.finished:
            for step in rollouts.steps():
                if step.action is None and step.frame is not None:
                    seen = views(pool, step.env, step.frame)
                    scores = np.full(lattice.outside + 1, -np.inf)
                    scores[choose(seen)] = 1.0
                    targets[step.env] = scores
                    tracker.start(step.env, step.frame)
                    episode_views[step.env] = seen
                elif step.done:
                    rewards[step.episode] = step.reward
                    if collect:
                        kept[step.episode] = {
                            **episode_views[step.env],
                            "pose": pose_array([tracker.poses[step.env]])[0],
                            "reward": np.float32(step.reward),
                        }
                    done += 1
                    if done % 100 == 0:
                        print(f"{done} episodes, {sum(rewards.values()):.0f} lifted", flush=True)

            def policy(states: np.ndarray, indices: list[int], timesteps: list[int]) -> list[int]:
                actions = []
                for index, t in zip(indices, timesteps):
                    values = lattice.move_values(tracker.poses[index], t, targets[index])
                    action = 0 if values is None else int(np.argmax(values))
                    tracker.moved(index, action)
                    actions.append(action)
                return actions

            rollouts.act(policy)
    ordered = [kept[i] for i in range(episodes)] if collect else []
    columns = {key: [row[key] for row in ordered] for key in (ordered[0] if ordered else {})}
    return [rewards[i] for i in range(episodes)], columns


def greedy_chooser(net: nn.Module, view: str, lattice: PoseLattice) -> Callable[[dict[str, np.ndarray]], int]:
    candidates = torch.from_numpy(lattice.final_poses)[None]

    def choose(seen: dict[str, np.ndarray]) -> int:
        batch = {key: torch.from_numpy(value[None]).float().div_(255.0) for key, value in seen.items()}
        with torch.no_grad():
            logits = net(image_input(batch, view), candidates)
        return int(lattice.finals[int(logits[0].argmax())])

    return choose


def main(argv: list[str]) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("collect", "screen"))
    parser.add_argument("views", nargs="*", default=["rgb", "rgbd", "map"], help="views to screen (see above)")
    parser.add_argument("--episodes", type=positive_int, default=1200, help="episodes to collect, or to train on")
    parser.add_argument("--seed", type=int, default=7, help="seed of the collection's workers and poses")
    parser.add_argument("--eval-episodes", type=positive_int, default=100, help="greedy test scenes per view")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the test scenes (the benchmark's)")
    parser.add_argument("--refit-seed", type=int, default=0, help="seed of the refit's weights and order")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/view-screen")
    args = parser.parse_args(argv)
    for name in args.views:
        try:
            parse_view(name)
        except ValueError as error:
            parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "episodes.npz"
    torch.set_num_threads(1)
    if args.command == "collect":
        lattice = PoseLattice()
        rng = random.Random(args.seed)
        started = time.time()
        _, columns = play(args.episodes, args.seed, False, lambda seen: rng.choice(lattice.finals), collect=True)
        data = {key: np.stack(value) for key, value in columns.items()}
        if store.exists():
            old = dict(np.load(store))
            data = {key: np.concatenate((old[key], data[key])) for key in data}
        np.savez(store, **data)  # type: ignore[arg-type]
        print(f"{len(data['reward'])} episodes in {store} ({time.time() - started:.0f} s for these)")
        return
    data = {key: value[: args.episodes] for key, value in np.load(store).items()}
    lattice = PoseLattice()
    for view in args.views:
        started = time.time()
        net = refit(view, data, args.refit_seed)
        fitted = time.time() - started
        rewards, _ = play(args.eval_episodes, args.eval_seed, True, greedy_chooser(net, view, lattice))
        successes = int(sum(rewards))
        line = success_rate(successes, len(rewards))
        print(f"{view}: {len(data['reward'])} episodes, refit {fitted:.0f} s, greedy {line}", flush=True)
        new = not (args.out / "screen.csv").exists()
        with open(args.out / "screen.csv", "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["view", "episodes", "refit_seed", "successes", "eval_episodes", "eval_seed"])
            writer.writerow([view, len(data["reward"]), args.refit_seed, successes, len(rewards), args.eval_seed])


if __name__ == "__main__":
    main(sys.argv[1:])
