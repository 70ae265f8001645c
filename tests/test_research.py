"""The research probes (benchmarks/research/) still run: each answered its question, and the learning record
cites their results."""

from __future__ import annotations

import csv
import functools
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error

from benchmarks.research import approach_probe, choice_screen, fixed_scenes, probe, replay_screen, scene_ceiling
from benchmarks.research.input_probe import collect as collect_outcomes
from common import DQN, preprocess_frame
from grasping.checkpoints import CHECKPOINT_KEYS, load_checkpoint
from grasping.environment import make_env
from grasping.kinematics import pose_array
from grasping.pose_agent import OBJECT_HEIGHT, GraspNet, PoseLattice, PosePolicy, newest_frames, pixel_of

RESEARCH = ROOT / "benchmarks" / "research"


def test_roc_auc_by_ranks_is_the_share_of_success_failure_pairs_in_order():
    assert probe.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert np.isnan(probe.roc_auc(np.array([0.2, 0.3]), np.array([1, 1])))
    rng = np.random.default_rng(0)
    for _ in range(50):  # few distinct scores: many ties, each pair counting half
        scores, outcomes = rng.integers(0, 4, 30).astype(float), rng.integers(0, 2, 30)
        success, failure = scores[outcomes == 1], scores[outcomes == 0]
        pairs = (success[:, None] > failure).mean() + 0.5 * (success[:, None] == failure).mean()
        assert probe.roc_auc(scores, outcomes) == pytest.approx(pairs)


def input_probe(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RESEARCH / "input_probe.py"), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_input_probe_keeps_the_real_observation_and_reuses_its_episodes(tmp_path):
    first = input_probe(tmp_path, "--episodes", "6", "--epochs", "1", "--min-timestep", "2")
    assert first.returncode == 0, first.stderr
    assert "6 episodes collected" in first.stdout and first.stderr == ""

    data = np.load(tmp_path / "episodes.npz")
    n = len(data["timestep"])
    assert data["gray40"].shape == (n, 1, 40, 40)
    assert data["rgb48"].shape == (n, 3, 48, 48) and data["rgb96"].shape == (n, 3, 96, 96)
    for rgb, gray in zip(data["rgb48"], data["gray40"]):  # the 48x48 scene is the observation itself
        assert np.array_equal(preprocess_frame(rgb.transpose(1, 2, 0)), gray[0])
    assert sorted(set(data["episode"].tolist())) == list(range(6))
    assert np.all(np.diff(data["episode"]) >= 0), "states in episode order, whichever worker replied first"
    for episode in range(6):
        steps = data["timestep"][data["episode"] == episode]
        assert steps.tolist() == list(range(len(steps))), "each episode's states in order from t = 0"
        assert len(set(data["outcome"][data["episode"] == episode].tolist())) == 1, "one outcome per episode"
    again = collect_outcomes(6, seed=0)  # the script's default seed
    assert [key for key in again if not np.array_equal(again[key], data[key])] == [], "a seed gives the same states"

    second = input_probe(tmp_path, "--episodes", "6", "--epochs", "1", "--min-timestep", "2")
    assert second.returncode == 0, second.stderr
    assert f"6 episodes from {tmp_path / 'episodes.npz'}" in second.stdout
    with open(tmp_path / "input_probe.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["input"], r["network"]) for r in rows] == [
        (i, k) for i in ("gray40", "rgb48", "rgb96") for k in ("lecture", "spatial")
    ]
    assert all(int(r["train"]) + int(r["test"]) == int((data["timestep"] >= 2).sum()) for r in rows)


@pytest.mark.slow
def test_approach_probe_labels_the_moves_and_reuses_its_episodes(tmp_path):
    command = [
        sys.executable,
        str(RESEARCH / "approach_probe.py"),
        "--out",
        str(tmp_path),
        "--episodes",
        "6",
        "--epochs",
        "1",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "6 episodes collected" in first.stdout and first.stderr == ""

    data = np.load(tmp_path / "episodes.npz")
    n = len(data["action"])
    assert n > 0 and data["stack40"].shape == (n, 5, 40, 40) and data["rgb96"].shape == (n, 3, 96, 96)
    assert set(data["action"].tolist()) <= {1, 2, 3, 4}, "only moves in the tray's plane are labelled"
    assert set(data["episode"].tolist()) <= set(range(6))
    assert data["gripper"].shape == (n, 2) and data["objects"].shape == (n, 5, 2)
    approach = data["approach"]
    assert np.all(np.abs(approach) < 2) and approach.min() < 0 < approach.max(), "random moves go both ways"
    # Each label belongs to its own move, whichever worker replied first: the simulator's positions
    # before the move, with the gripper going one action length, account for most of it.
    ideal = approach_probe.ideal_approach(dict(data))
    assert 1 - ((ideal - approach) ** 2).mean() / approach.var() > 0.6
    again = approach_probe.collect(6, seed=0)  # the script's default seed
    assert [key for key in again if not np.array_equal(again[key], data[key])] == [], "a seed gives the same moves"

    # The probes' inputs: the 96x96 scene unchanged, or through the project's preprocessing.
    shapes = {name: tuple(approach_probe.network_input(dict(data), name).shape) for name in approach_probe.INPUTS}
    assert shapes == {
        "stack40": (n, 5, 40, 40),
        "gray48": (n, 1, 48, 48),
        "rgb48": (n, 3, 48, 48),
        "gray96": (n, 1, 96, 96),
        "rgb96": (n, 3, 96, 96),
    }
    assert torch.equal(approach_probe.network_input(dict(data), "rgb96"), torch.from_numpy(data["rgb96"]) / 255)

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"6 episodes from {tmp_path / 'episodes.npz'}" in second.stdout
    with open(tmp_path / "approach_probe.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["input"], float(r["fraction"])) for r in rows] == [
        (i, f) for i in approach_probe.INPUTS for f in (0.25, 0.5, 1.0)
    ]
    assert all(int(r["best_epoch"]) == 1 for r in rows), "one epoch was asked for"
    assert all(int(r["test"]) == int((data["episode"] % 5 == 4).sum()) for r in rows)

    fine = subprocess.run(
        command + ["--network", "fine", "--inputs", "stack40", "rgb48"], capture_output=True, text=True, timeout=300
    )
    assert fine.returncode == 0, fine.stderr
    with open(tmp_path / "approach_probe-fine.csv", newline="") as handle:
        assert [(r["input"], float(r["fraction"])) for r in csv.DictReader(handle)] == [
            (i, f) for i in ("stack40", "rgb48") for f in (0.25, 0.5, 1.0)
        ]
    with open(tmp_path / "approach_probe.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == rows, "the lecture network's scores are kept"


@pytest.mark.slow
def test_repeating_scenes_set_up_each_scene_again_and_leave_the_generators_as_they_were():
    env = make_env(is_test=False, max_steps=3)
    try:
        original_reset = type(env).reset
        python_before, numpy_before = random.getstate(), np.random.get_state()
        with fixed_scenes.repeating_scenes(2) as scenes:
            frames = [env.reset() for _ in range(3)]
        assert scenes == [0, 1, 0]
        assert np.array_equal(frames[0], frames[2]), "scene 0 again: the same objects in the same places"
        assert not np.array_equal(frames[0], frames[1])
        numpy_after = np.random.get_state()
        assert isinstance(numpy_before, tuple) and isinstance(numpy_after, tuple), "the legacy state tuples"
        assert random.getstate() == python_before
        assert np.array_equal(numpy_after[1], numpy_before[1]) and numpy_after[2:] == numpy_before[2:]
        assert type(env).reset is original_reset
    finally:
        env.close()


@pytest.mark.slow
def test_fixed_scenes_benchmark_trains_then_scores_each_scene(tmp_path):
    command = [
        sys.executable,
        str(RESEARCH / "fixed_scenes.py"),
        "--out",
        str(tmp_path),
        "--scenes",
        "2",
        "--episodes",
        "2",
        "--eval-episodes",
        "2",
        "--",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Episode 2's policy, 2 episodes per scene:" in result.stdout
    with open(tmp_path / "scenes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["scene"], r["policy"], r["episodes"]) for r in rows] == [
        (scene, policy, "2") for scene in ("0", "1") for policy in ("greedy", "random")
    ]
    assert all(0 <= int(r["successes"]) <= 2 for r in rows)
    evaluated = load_checkpoint(tmp_path / "policies" / "episode-2.pt", torch.device("cpu"), CHECKPOINT_KEYS)
    DQN(40, 40, 7).load_state_dict(evaluated["policy_net_state_dict"], strict=True)

    refused = subprocess.run([*command[:-7], "--", "--num-envs", "2"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "fixed_scenes.py: error: training flag --num-envs is set by this script; leave it out"
    ]


@pytest.mark.slow
def test_an_episode_replayed_from_its_scene_ends_the_same_way():
    env = make_env(is_test=False)
    rng = np.random.default_rng(0)
    try:
        played: dict[bool, tuple[int, list[int], float]] = {}
        for episode in range(40):  # the random policy lifts an object in about a third of its episodes
            scene = episode % 4
            actions, reward = scene_ceiling.play(env, scene, lambda: int(rng.integers(7)))
            played.setdefault(reward > 0, (scene, actions, reward))
            if len(played) == 2:
                break
        assert set(played) == {True, False}, "a success and a failure to replay"
        for scene, actions, reward in played.values():
            moves = iter(actions)
            assert scene_ceiling.play(env, scene, functools.partial(next, moves)) == (actions, reward)
    finally:
        env.close()


@pytest.mark.slow
def test_scene_ceiling_benchmark_tries_every_scene_and_replays_its_successes(tmp_path):
    command = [
        sys.executable,
        str(RESEARCH / "scene_ceiling.py"),
        "--out",
        str(tmp_path),
        "--scenes",
        "3",
        "--tries",
        "2",
        "--objects",
        "train",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "scenes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["scene"], r["tries"]) for r in rows] == [("0", "2"), ("1", "2"), ("2", "2")]
    for row in rows:
        assert 0 <= int(row["successes"]) <= 2
        assert row["replay_reward"] == ("1" if int(row["successes"]) else ""), "a success replays as a success"
    lifted = sum(int(r["successes"]) > 0 for r in rows)
    assert f"scenes lifted at least once:  {lifted}/3" in result.stdout
    alone = subprocess.run([*command, "--num-workers", "1"], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0 and alone.stdout == result.stdout, "the same tries whichever worker plays a scene"

    assert_one_line_error(
        subprocess.run([*command, "--tries", "0"], capture_output=True, text=True, timeout=60),
        "--tries",
        "must be a positive integer",
    )


def test_early_moves_reach_the_same_final_pose_moving_in_the_plane_first():
    lattice = PoseLattice()
    target = (560, -120, 1)
    scores = np.full(lattice.outside + 1, -np.inf)
    scores[lattice.finals] = 0.1
    scores[lattice.index[target]] = 0.9
    paths = {}
    for policy in (PosePolicy(GraspNet(96), lattice), choice_screen.EarlyMoves(GraspNet(96), lattice)):
        policy.scores[0] = scores
        policy.episodes.start(0, np.zeros(1))
        actions = []
        for t in range(lattice.horizon):
            values = lattice.move_values(policy.episodes.poses[0], t, scores)
            assert values is not None
            action = policy.choose(values, 0, t)
            policy.episodes.moved(0, action)
            actions.append(action)
        assert policy.episodes.poses[0] == target
        paths[type(policy).__name__] = actions
    assert paths["PosePolicy"][:2] == [0, 0], "the agent stays first"
    assert paths["EarlyMoves"][-2:] == [0, 0] and 0 not in paths["EarlyMoves"][:5], "moves first, stays last"


def test_replanning_scores_the_final_poses_on_each_newest_frame():
    torch.manual_seed(0)
    net, late_net, lattice = GraspNet(96, height=True), GraspNet(96, height=True), PoseLattice()
    first, later = (np.random.default_rng(k).integers(0, 256, (2, 1, 4, 96, 96), dtype=np.uint8) for k in (0, 1))
    candidates = torch.from_numpy(lattice.final_poses)
    for scorer in (net, late_net):
        policy = choice_screen.Replanning(net, lattice, None if scorer is net else late_net)
        policy(first, [0, 1], [0, 0])
        policy(later, [0, 1], [1, 1])
        with torch.no_grad():
            expected = torch.sigmoid(scorer(newest_frames(later), candidates.expand(2, -1, -1))).numpy()
        for stream in (0, 1):
            np.testing.assert_allclose(policy.scores[stream][lattice.finals], expected[stream], rtol=1e-5)
        assert policy.episodes.poses[0] in lattice.index, "it still moves along the lattice"


@pytest.mark.slow
def test_closed_loop_screen_keeps_every_step_of_each_episode_and_plays_each_variant(tmp_path):
    command = [sys.executable, str(RESEARCH / "closed_loop_screen.py")]
    policy = str(ROOT / "pretrained" / "pose_agent.pt")
    collect = [*command, "collect", policy, "--episodes", "4", "--out", str(tmp_path)]
    result = subprocess.run(collect, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "episodes.npz") as data:
        episode, timestep, poses, rewards = data["episode"], data["timestep"], data["poses"], data["rewards"]
        assert data["frames"].shape == (len(episode), 4, 96, 96) and data["frames"].dtype == np.uint8
    assert sorted(set(episode)) == [0, 1, 2, 3]
    for k in range(4):
        rows = episode == k
        assert list(timestep[rows]) == list(range(rows.sum())), "every frame an action was chosen on, in order"
        assert rows.sum() >= PoseLattice().horizon, "the height hack grasps after the horizon's actions at least"
        assert (poses[rows] == poses[rows][0]).all() and (rewards[rows] == rewards[rows][0]).all()
        assert rewards[rows][0] in (0.0, 1.0)
    variants = ["open", "late", "closed"]
    result = subprocess.run(
        [*command, "screen", *variants, "--eval-episodes", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == variants
    assert "4 episodes" in lines[0] and "against open 0 scenes won and 0 lost" in lines[0]
    with open(tmp_path / "screen.csv", newline="") as handle:
        assert [row["variant"] for row in csv.DictReader(handle)] == variants


def test_replay_screen_decays_the_refits_rate_to_zero(monkeypatch):
    config = {"agent": "pose", "image_size": 24, "rgb": True, "height": True, "patch_scales": 2}
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 4, 24, 24), dtype=np.uint8))
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 10)
    poses = torch.from_numpy(pose_array([(550, 0, 0)] * 40))
    rng = np.random.default_rng(0).bit_generator.state
    state = {"replay_memory": {"frames": frames, "poses": poses, "rewards": rewards, "pushed": 40, "rng": rng}}
    state["config"] = config
    seen: list[float] = []
    real_loss = replay_screen.PoseAgent.refit.__globals__["grasp_loss"]

    def spy(net, optimizer, batch_frames, batch_poses, batch_rewards):
        seen.append(optimizer.param_groups[0]["lr"])
        return real_loss(net, optimizer, batch_frames, batch_poses, batch_rewards)

    monkeypatch.setitem(replay_screen.PoseAgent.refit.__globals__, "grasp_loss", spy)
    observation = replay_screen.observation_of(config)
    replay_screen.refit(state, observation, seed=0, passes=2, cosine=True)
    assert len(seen) == 2 * 2, "two passes of two batches"
    assert seen[0] == 1e-3 and all(a > b for a, b in zip(seen, seen[1:])), "decays at every batch"
    assert 0 < seen[-1] < 1e-3 * (1 - np.cos(np.pi / len(seen))), "the last batch's rate is close to 0"


def test_the_scene_scorer_reads_each_pose_at_its_pixel_from_one_pass_over_the_frame():
    torch.manual_seed(0)
    net = replay_screen.SceneScorerNet(96, rgb=True, height=True).eval()
    candidates = torch.from_numpy(PoseLattice().final_poses)
    frame = torch.rand(1, 4, 96, 96)
    with torch.no_grad():
        together = net(frame, candidates[None])[0]
        alone = torch.cat([net(frame, candidates[k : k + 1][None])[0] for k in range(0, len(candidates), 37)])
    torch.testing.assert_close(alone, together[::37], rtol=1e-5, atol=1e-6)
    for pose in ((520, -150, 0), (630, 200, 0)):
        frame = torch.rand(1, 4, 96, 96, requires_grad=True)
        net(frame, torch.from_numpy(pose_array([pose]))[None]).sum().backward()
        assert frame.grad is not None
        weight = frame.grad.abs().sum(dim=(0, 1))
        rows, columns = torch.meshgrid(torch.arange(96.0) + 0.5, torch.arange(96.0) + 0.5, indexing="ij")
        centre = np.array([(weight * columns).sum() / weight.sum(), (weight * rows).sum() / weight.sum()])
        pixel = pixel_of(np.array([[pose[0] / 1000, pose[1] / 1000, OBJECT_HEIGHT]]), 96)[0]
        assert np.linalg.norm(centre - pixel) < 4, f"what {pose} is scored from centres on its pixel"


def test_the_footprint_crop_turns_with_the_gripper_about_the_poses_pixel():
    net = replay_screen.FootprintNet(96, rgb=True, height=True, patch_scales=2)
    size, span = net.FOOTPRINT, net.FOOTPRINT_SPAN
    rows, columns = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")

    def centre(point: tuple[float, float], angle: float) -> np.ndarray:
        """Where a bright spot at the world point `point` lies in the crop of the pose (0.56, 0.03, angle)."""
        frame = torch.zeros(1, 4, 96, 96)
        column, row = pixel_of(np.array([[*point, OBJECT_HEIGHT]]), 96)[0].astype(int)
        frame[0, :, row, column] = 1.0
        weight = net.footprints(frame, torch.tensor([[[0.56, 0.03, angle]]]))[0, 0]
        return np.array([(weight * columns).sum() / weight.sum(), (weight * rows).sum() / weight.sum()])

    for angle in (0.0, 0.75, -1.5):
        assert np.linalg.norm(centre((0.56, 0.03), angle) - size / 2) < 1.5, "the pose's own pixel stays in the middle"
    ahead = np.array([0.56 + span / 4, 0.03])
    straight, turned = centre(tuple(ahead), 0.0), centre(tuple(ahead), np.pi / 2)
    assert straight[0] - size / 2 > size / 8 and abs(straight[1] - size / 2) < 2, "along the crop's first axis at 0"
    assert turned[1] - size / 2 < -size / 8 and abs(turned[0] - size / 2) < 2, "a quarter turn takes it to the other"


@pytest.mark.slow
def test_choice_screen_plays_every_variant_on_the_same_scenes(tmp_path):
    variants = ["argmax", "early", "replan", "robust15", "ensemble"]
    policy = str(ROOT / "pretrained" / "pose_agent.pt")
    command = [sys.executable, str(RESEARCH / "choice_screen.py"), policy]
    arguments = [*variants, "--eval-episodes", "2", "--out", str(tmp_path), "--with", policy]
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == variants
    assert "against argmax 0 scenes won and 0 lost" in lines[0]
    assert "against argmax 0 scenes won and 0 lost" in lines[-1], "a policy averaged with itself plays as it does"
    with open(tmp_path / "scenes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["scene"]) for r in rows] == [(v, s) for v in variants for s in ("0", "1")]
    assert all(float(r["reward"]) in (0.0, 1.0) for r in rows)
    assert_one_line_error(
        subprocess.run([*command, "widest", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60),
        "widest",
        "not argmax, early, replan, ensemble, robustM or pessimistM",
    )
    assert_one_line_error(
        subprocess.run([*command, "ensemble", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60),
        "ensemble",
        "--with",
    )


@pytest.mark.slow
def test_failure_probe_gives_each_greedy_episode_one_cause(tmp_path):
    command = [sys.executable, str(RESEARCH / "failure_probe.py"), str(ROOT / "pretrained" / "pose_agent.pt")]
    result = subprocess.run(
        [*command, "--episodes", "3", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "episodes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["episode"] for r in rows] == ["0", "1", "2"]
    for row in rows:
        assert (row["cause"] == "lifted") == (float(row["reward"]) == 1.0)
        assert row["cause"] in ("lifted", "pushed", "short", "beside", "dropped")
        assert int(row["steps"]) >= 7, "the grasp comes once the gripper is low, after 7 actions or more"
        assert float(row["short_mm"]) < 150, "the gripper is in the tray, near the chosen pose"
    assert (tmp_path / "failures.png").stat().st_size > 0
    printed = {line.split(":")[0]: int(line.split(": ")[1].split("/")[0]) for line in result.stdout.splitlines()}
    assert printed == {cause: [r["cause"] for r in rows].count(cause) for cause in printed}
    assert sum(printed.values()) == 3
