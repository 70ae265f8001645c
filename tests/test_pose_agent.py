"""The pose agent: its kinematics and camera against the real arm, acting, its memory and learning, end to end."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error, read_events, run_script, taken

from common import Observation, seed_everything
from grasping.camera import camera_matrix
from grasping.checkpoints import checkpoint_config, load_checkpoint
from grasping.cli import CheckpointError
from grasping.environment import make_env, quiet_pybullet
from grasping.kinematics import ANGLE_STEP, START_POSE, move, pose_array
from grasping.pose_agent import (
    GRASP_AFTER,
    OBJECT_HEIGHT,
    EpisodeMemory,
    GraspNet,
    PoseAgent,
    PoseLattice,
    PosePolicy,
    SceneRetries,
    grasp_loss,
    newest_frames,
    pixel_of,
    pose_config,
)

CPU = torch.device("cpu")
TINY = (
    "--max-steps",
    "3",
    "--batch-size",
    "2",
    "--learning-starts",
    "2",
    "--device",
    "cpu",
    "--image-size",
    "48",
    "--clip-every",
    "0",
)


def commanded_pose(env) -> tuple[int, int, int]:
    """The real arm's commanded pose, in the lattice's units."""
    x, y = env._kuka.endEffectorPos[:2]
    return round(1000 * x), round(1000 * y), round(env._kuka.endEffectorAngle / ANGLE_STEP)


@pytest.fixture(scope="module")
def lattice() -> PoseLattice:
    return PoseLattice()


@pytest.mark.slow
def test_the_reachable_poses_are_the_real_arms_clamps_included(lattice):
    assert len(lattice.finals) == 512 and len(lattice.poses) == 512, "7 actions from the start reach 512 poses"
    seed_everything(5)
    env = make_env(is_test=False, max_steps=12)
    try:
        rng = random.Random(5)
        # Pushed against every clamp, then random moves; the grasp ends an episode after 7 to 9 actions.
        sequences = [[2, 2, 2, 3, 3, 3, 3, 3], [1, 1, 4, 4, 4, 4, 4, 6, 6], [rng.randrange(7) for _ in range(12)]]
        ends = []
        for actions in sequences:
            env.reset()
            assert commanded_pose(env) == START_POSE
            pose = START_POSE
            for taken, action in enumerate(actions, start=1):
                _, _, done, _ = env.step(action)
                pose = move(pose, action)
                assert commanded_pose(env) == pose, (actions, taken)
                if taken <= GRASP_AFTER:
                    assert lattice.reach[taken][0, lattice.index[pose]], "a pose the lattice says is reachable"
                if done:
                    ends.append(taken)
                    break
        assert {(500, 0), (650, 0)} <= {pose[:2] for pose in lattice.poses}
        assert move((650, 220, 0), 2) == (650, 220, 0) and move((500, -170, 3), 3) == (500, -170, 3)
        assert all(GRASP_AFTER <= end <= 9 for end in ends), ends
    finally:
        env.close()


def test_the_camera_is_the_environments_and_projects_onto_what_it_shows():
    pybullet = quiet_pybullet()
    seed_everything(2)
    env = make_env(is_test=True, max_steps=20, camera_size=96)
    try:
        env.reset()
        view = np.array(env._view_matrix).reshape(4, 4).T
        projection = np.array(env._proj_matrix).reshape(4, 4).T
        np.testing.assert_allclose(camera_matrix(), projection @ view, atol=1e-6)
        for action in (2, 3, 3, 0, 0, 0):  # down towards the tray, not yet low enough to grasp
            env.step(action)
        segmentation = np.reshape(pybullet.getCameraImage(96, 96, env._view_matrix, env._proj_matrix)[4], (96, 96))
        gripper = pybullet.getLinkState(env._kuka.kukaUid, env._kuka.kukaEndEffectorIndex)[0]
        objects = [pybullet.getBasePositionAndOrientation(uid)[0] for uid in env._objectUids]
        column, row = pixel_of(np.array([gripper, *objects]), 96).astype(int).T
        assert segmentation[row[0], column[0]] == env._kuka.kukaUid, "the gripper's point is on the arm"
        on_object = [segmentation[r, c] == uid for r, c, uid in zip(row[1:], column[1:], env._objectUids)]
        assert sum(on_object) >= len(objects) - 1, "each object's centre lands on it (one may be hidden)"
        assert all(abs(z - OBJECT_HEIGHT) < 0.05 for _, _, z in objects), "the objects rest at OBJECT_HEIGHT"
    finally:
        env.close()


def test_wider_patches_see_the_clutter_around_the_pose_that_the_patch_does_not():
    narrow, scaled = GraspNet(96, rgb=False), GraspNet(96, rgb=False, patch_scales=3)
    column, row = pixel_of(np.array([[0.59, 0.12, OBJECT_HEIGHT]]), 96)[0]
    frame = torch.zeros(1, 1, 96, 96)
    frame[0, 0, int(row) - 2 : int(row) + 3, int(column) + 22 : int(column) + 27] = 1.0  # 24 pixels right of the pose
    position = torch.tensor([[0.59, 0.12]])
    patches = scaled.patches(frame, position)[0]
    assert patches.shape == (3, 32, 32)
    assert torch.equal(patches[0], narrow.patches(frame, position)[0, 0]), "the narrowest is the pose's own patch"
    assert patches[0].max() == 0, "the 32-pixel patch reaches 16 pixels from the pose"
    for scale, patch in ((2, patches[1]), (4, patches[2])):
        peak = np.unravel_index(int(patch.argmax()), patch.shape)
        assert abs(peak[0] - 15.5) <= 1.5 and abs(peak[1] - (15.5 + 24 / scale)) <= 1.5, (scale, peak)


def test_a_poses_patch_is_centred_on_its_pixel():
    net = GraspNet(96, rgb=False)
    pose = (590, 120, 0)
    column, row = pixel_of(np.array([[0.59, 0.12, OBJECT_HEIGHT]]), 96)[0]
    frame = torch.zeros(1, 1, 96, 96)
    frame[0, 0, int(row), int(column)] = 1.0
    patch = net.patches(frame, torch.from_numpy(pose_array([pose])[:, :2]))[0, 0]
    assert patch.shape == (32, 32)
    peak = np.unravel_index(int(patch.argmax()), patch.shape)
    assert abs(peak[0] - 15.5) <= 1.5 and abs(peak[1] - 15.5) <= 1.5, peak


@pytest.mark.slow
def test_greedy_acting_reaches_the_pose_it_chose(lattice):
    torch.manual_seed(0)
    net = GraspNet(48, rgb=True)
    seed_everything(4)
    env = make_env(is_test=True, max_steps=20, camera_size=48)
    try:
        policy = PosePolicy(net, lattice)
        from common import FrameStack, Observation

        observation, stack = Observation(48, rgb=True), FrameStack()
        state = stack.reset(observation.preprocess(env.reset()))
        actions: list[int] = []
        for _ in range(GRASP_AFTER):
            action = policy(state[None], [3], [len(actions)])[0]
            actions.append(action)
            state = stack.push(observation.preprocess(env.step(action)[0]))
        scores = policy.scores[3]
        chosen = lattice.poses[int(np.argmax(scores))]
        assert commanded_pose(env) == chosen == policy.episodes.poses[3], actions
        with torch.no_grad():
            value = torch.sigmoid(net.eval()(policy.frames[3][None], torch.from_numpy(pose_array([chosen]))[None]))
        assert float(value) == pytest.approx(policy.planned_value[3], abs=1e-5), "the value it planned with"
        assert len(set(actions)) > 1 or chosen != START_POSE
    finally:
        env.close()


def test_an_exploring_episode_reaches_a_random_final_pose_and_stays(lattice):
    net = GraspNet(48, rgb=False)
    policy = PosePolicy(net, lattice, random.Random(1))
    states = np.zeros((2, 5, 48, 48), dtype=np.uint8)
    targets = set()
    for _episode in range(20):
        for t in range(GRASP_AFTER + 2):
            policy(states, [0, 1], [t, t], epsilon=1.0)
        for index in (0, 1):
            assert policy.exploring[index]
            assert policy.episodes.poses[index] == lattice.poses[int(np.argmax(policy.scores[index]))]
            targets.add(policy.episodes.poses[index])
    assert len(targets) > 30, "targets drawn across the final poses"


def test_boltzmann_exploration_draws_final_poses_in_proportion_to_their_predicted_odds(lattice):
    policy = PosePolicy(GraspNet(48, rgb=False), lattice, random.Random(2), exploration="boltzmann")
    logits = np.full(len(lattice.finals), -2.0, dtype=np.float32)
    logits[:4] = [3.0, 3.0, 2.0, 2.0]  # odds e^5 and e^4 times the rest's
    none_excluded = np.zeros(len(lattice.finals), dtype=bool)
    draws = [policy.exploring_target(logits, none_excluded) for _ in range(4000)]
    counts = {index: draws.count(index) for index in lattice.finals[:4]}
    weights = np.exp(logits - logits.max())
    expected = 4000 * weights[:4] / weights.sum()
    assert np.allclose(list(counts.values()), expected, rtol=0.15), (counts, expected)
    assert set(draws) - set(lattice.finals[:4]), "every final pose keeps a chance"
    uniform = PosePolicy(GraspNet(48, rgb=False), lattice, random.Random(2))
    assert sum(uniform.exploring_target(logits, none_excluded) in lattice.finals[:4] for _ in range(4000)) < 100
    with pytest.raises(ValueError, match="not one of"):
        PosePolicy(GraspNet(48, rgb=False), lattice, exploration="greedy")


def test_a_retried_scene_heads_for_the_best_final_pose_not_yet_tried_there(lattice):
    seed_everything(0)
    policy = PosePolicy(GraspNet(48, rgb=False), lattice, random.Random(0), exploration="boltzmann")
    retries = SceneRetries(2, policy)
    calls = []
    states = np.random.default_rng(0).integers(0, 255, (1, 5, 48, 48), dtype=np.uint8)
    ranked = lattice.finals[np.argsort(-policy.final_logits(newest_frames(states))[0].numpy(), kind="stable")]

    def episode(reward: float) -> int:
        retries.before_reset(0, lambda function, *args: calls.append(function.__name__))
        for t in range(GRASP_AFTER):
            policy(states, [0], [t])
        retries.episode_ended(0, reward)
        return lattice.index[policy.episodes.poses[0]]

    assert [episode(0.0) for _ in range(3)] == list(ranked[:3]), "the greedy pose, then the next best, twice"
    assert calls == ["scene_generators", "restore_scene_generators", "restore_scene_generators"]
    assert episode(1.0) == ranked[0], "after two retries a new scene, where nothing was tried yet"
    assert episode(0.0) == ranked[0], "a success owes no retry"
    assert calls[3:] == ["scene_generators"] * 2
    policy.tried[0] = list(lattice.finals[:-1])  # one final pose left: exploring draws it, whatever its odds
    for _ in range(5):
        policy(states, [0], [0], epsilon=1.0)
        assert policy.exploring[0] and policy.targets[0] == lattice.finals[-1]
    with pytest.raises(ValueError, match="not 1 to"):
        SceneRetries(0, policy)


def test_episode_memory_keeps_the_last_episodes_and_resumes(tmp_path):
    memory = EpisodeMemory(3, (2, 4, 4), seed=0)
    for i in range(5):
        memory.push(np.full((2, 4, 4), i, dtype=np.uint8), (500 + i, 0, i), float(i % 2))
    assert len(memory) == 3
    kept = sorted(int(frame[0, 0, 0]) for frame in memory.frames)
    assert kept == [2, 3, 4], "the oldest are replaced"
    frames, poses, rewards = memory.sample(3)
    assert frames.shape == (3, 2, 4, 4) and poses.shape == (3, 1, 3) and rewards.shape == (3, 1)
    for frame, pose, reward in zip(frames, poses, rewards):
        i = round(float(frame[0, 0, 0]) * 255)
        assert pose[0].tolist() == pytest.approx([(500 + i) / 1000, 0.0, i * ANGLE_STEP])
        assert float(reward) == i % 2
    torch.save(memory.state_dict(), tmp_path / "memory.pt")
    again = EpisodeMemory(3, (2, 4, 4), seed=1)
    again.load_state_dict(torch.load(tmp_path / "memory.pt", weights_only=True))
    assert torch.equal(again.frames, memory.frames) and again.pushed == 5
    assert [tuple(r) for r in again.sample(2)[1][:, 0].tolist()] == [
        tuple(r) for r in memory.sample(2)[1][:, 0].tolist()
    ]
    with pytest.raises(ValueError, match="not up to 2"):
        EpisodeMemory(2, (2, 4, 4)).load_state_dict(memory.state_dict())


def push_bright_square_episodes(memory: EpisodeMemory, lattice: PoseLattice, episodes: int, seed: int) -> None:
    """Synthetic episodes: a grasp succeeds where the frame has a bright square, and half the tries aim there."""
    rng = np.random.default_rng(seed)
    finals = [lattice.poses[i] for i in lattice.finals]
    pixels = pixel_of(np.c_[pose_array(finals)[:, :2], np.full(len(finals), OBJECT_HEIGHT)], 48).astype(int)
    for _ in range(episodes):
        target = rng.integers(len(finals))
        frame = np.zeros((48, 48), dtype=np.uint8)
        column, row = pixels[target]
        frame[max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2] = 255
        tried = target if rng.random() < 0.5 else rng.integers(len(finals))
        memory.push(frame, finals[tried], float(np.abs(pixels[tried] - pixels[target]).max() <= 1))


@pytest.mark.slow
def test_the_grasp_network_learns_where_a_grasp_succeeds(lattice):
    """A grasp succeeds where the frame has a bright square: after training the network ranks those poses first."""
    torch.manual_seed(0)
    memory = EpisodeMemory(400, (48, 48), seed=0)
    push_bright_square_episodes(memory, lattice, 400, seed=0)
    net = GraspNet(48, rgb=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    first = float(grasp_loss(net, optimizer, *memory.sample(64))[0])
    for _ in range(300):
        loss = float(grasp_loss(net, optimizer, *memory.sample(64))[0])
    assert loss < 0.5 * first, (first, loss)


@pytest.mark.slow
def test_a_refit_starts_from_fresh_weights_passes_over_every_episode_and_learns():
    """With refit_every 100, the 100th episode's end retrains the network from scratch on the whole memory; the
    episodes before it leave the network alone."""
    agents = []
    for online_steps in (0, 20):
        torch.manual_seed(0)
        agent = PoseAgent(
            Observation(48, False),
            CPU,
            seed=1,
            lr=1e-3,
            capacity=200,
            batch_size=32,
            learning_starts=50,
            refit_every=100,
            refit_epochs=8,
        )
        push_bright_square_episodes(agent.memory, agent.lattice, 100, seed=2)
        for _ in range(online_steps):  # weights and optimizer moments that the refit must forget
            grasp_loss(agent.net, agent.optimizer, *agent.memory.sample(32))
        before = [p.detach().clone() for p in agent.net.parameters()]
        assert agent.learn() is None, "no online steps between refits"
        assert all(agent.end_episode(i) is None for i in range(99)), "only every 100th episode refits"
        assert all(torch.equal(a, b) for a, b in zip(before, agent.net.parameters()))
        torch.manual_seed(3)
        agent.memory.rng = np.random.default_rng(4)
        loss, _ = taken(agent.end_episode(99))
        assert agent.gradient_steps == 8 * 4, "8 passes over 100 episodes in batches of 32"
        agents.append((agent, float(loss)))
    (fresh, fresh_loss), (trained, trained_loss) = agents
    for a, b in zip(fresh.net.parameters(), trained.net.parameters()):
        assert torch.allclose(a, b, atol=1e-5), "the weights before a refit make no difference to its result"
    assert fresh_loss == pytest.approx(trained_loss, abs=1e-5) and fresh_loss < 0.45, fresh_loss


def test_each_agents_checkpoint_is_refused_by_the_others_code():
    pose = {"policy_net_state_dict": {}, "config": GraspNet(48, True).config}
    with pytest.raises(CheckpointError, match="a checkpoint of --agent pose, not of the lecture's DQN"):
        checkpoint_config(pose, "p.pt")
    with pytest.raises(CheckpointError, match="a checkpoint of the dqn agent, not of --agent pose"):
        pose_config({"policy_net_state_dict": {}}, "d.pt")
    assert pose_config(pose, "p.pt") == {
        "agent": "pose", "image_size": 48, "rgb": True, "height": False, "patch_scales": 1, "overhead": False
    }  # fmt: skip
    before_height = {"agent": "pose", "image_size": 96, "rgb": True}  # saved before the height channel existed
    assert pose_config({"config": before_height}, "old.pt") == {
        **before_height, "height": False, "patch_scales": 1, "overhead": False
    }  # fmt: skip
    for bad in (
        {"agent": "pose", "image_size": 20, "rgb": True},
        {"agent": "pose", "rgb": True},
        {"agent": "pose", "image_size": 48, "rgb": "yes"},
        {"agent": "pose", "image_size": 48, "rgb": True, "height": 1},
        {"agent": "pose", "image_size": 48, "rgb": True, "height": True, "patch_scales": 0},
        {"agent": "pose", "image_size": 48, "rgb": True, "height": True, "patch_scales": 5},
        {"agent": "pose", "image_size": 48, "rgb": True, "height": True, "patch_scales": 2.0},
        {"agent": "pose", "image_size": 48, "rgb": True, "height": True, "patch_scales": 2, "overhead": "no"},
    ):
        with pytest.raises(CheckpointError, match="not a pose agent's configuration"):
            pose_config({"config": bad}, "p.pt")


@pytest.mark.slow
@pytest.mark.parametrize(
    "num_envs,learning",
    [
        (1, ("--exploration", "boltzmann", "--retry-failed", "1")),
        (2, ("--refit-every", "2", "--refit-epochs", "2", "--height", "--patch-scales", "2", "--overhead")),
        (2, ("--retry-failed", "1")),
    ],
    ids=["1-online-boltzmann-retry", "2-refits-height-scales-overhead", "2-retry"],
)
def test_the_pose_agent_trains_resumes_and_evaluates_end_to_end(workdir, num_envs, learning):
    height = "--height" in learning
    scales = 2 if "--patch-scales" in learning else 1
    overhead = "--overhead" in learning
    result = run_script(
        "train",
        "--agent",
        "pose",
        "--rgb",
        "--episodes",
        "3",
        "--num-envs",
        str(num_envs),
        "--logdir",
        "runs/pose",
        *TINY,
        *learning,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ("policy_net_state_dict", "replay_memory"))
    assert state["config"] == {
        "agent": "pose",
        "image_size": 48,
        "rgb": True,
        "height": height,
        "patch_scales": scales,
        "overhead": overhead,
    }
    assert "target_net_state_dict" not in state, "the pose agent has no target network"
    assert state["hyperparameters"]["exploration"] == ("boltzmann" if "boltzmann" in learning else "uniform")
    assert state["episode"] == 3 and state["replay_memory"]["frames"].shape == (3, 3 + height, 48, 48)
    if height:  # the tray's floor, 6 mm above FLOOR_Z (9 as sampled at 48x48), fills much of the height channel
        floor = (state["replay_memory"]["frames"][:, 3].int() - 6).abs() <= 4
        assert floor.float().mean() > 0.2
    if scales > 1:  # the network's shape is in the checkpoint: a resume that would build another is refused
        at = learning.index("--patch-scales")
        other = [*learning[:at], *learning[at + 2 :]]
        result = run_script(
            "train", "--agent", "pose", "--rgb", "--episodes", "5", "--resume", *TINY, *other, cwd=workdir
        )  # fmt: skip
        assert_one_line_error(
            result, "--agent pose --image-size 48 --rgb --height --patch-scales 2 --overhead; resume it the same"
        )

    result = run_script(
        "train",
        "--agent",
        "pose",
        "--rgb",
        "--episodes",
        "5",
        "--num-envs",
        str(num_envs),
        "--resume",
        *TINY,
        *learning,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert "Resuming from policy_dqn.resume.pt at episode 3 (replay memory restored: 3 episodes)" in result.stdout
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ("replay_memory",))
    assert state["episode"] == 5 and len(state["replay_memory"]["rewards"]) == 5
    if "--retry-failed" in learning:  # 3 actions never lift: each new scene is played once more
        assert state["hyperparameters"]["retry_failed"] == 1
        frames = state["replay_memory"]["frames"].flatten(start_dim=1)
        same = [[j for j in range(5) if torch.equal(frames[i], frames[j])] for i in range(5)]
        if num_envs == 1:  # the retry owed at the first run's stop is not kept: the resumed run draws anew
            assert same == [[0, 1], [0, 1], [2], [3, 4], [3, 4]]
        else:
            assert max(map(len, same)) == 2
    scalars, _ = read_events(workdir / "runs" / "pose")
    assert [step for step, _ in scalars["epsilon"]] == list(range(5))
    if "--refit-every" in learning:  # refits after episodes 1 and 3, the second one's by the resumed run
        assert [step for step, _ in scalars["loss"]] == [1, 3]
    else:
        assert "loss" in scalars

    gif = ("--gif", "pose.gif") if num_envs == 1 else ()
    result = run_script(
        "eval",
        "--checkpoint",
        "policy_dqn.resume.pt",
        "--episodes",
        "2",
        "--max-steps",
        "3",
        "--num-envs",
        str(num_envs),
        "--device",
        "cpu",
        *gif,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "Success rate: 0/2 = 0.0%" in result.stdout, "3 actions never reach the objects"
    if gif:
        assert (workdir / "pose.gif").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")
def test_the_pose_agent_trains_resumes_and_evaluates_on_cuda(workdir):
    """Refits, the episode memory and both explorations on the GPU; the checkpoint then scores alike on the CPU."""
    cuda = [*TINY[: TINY.index("--device")], *TINY[TINY.index("--device") + 2 :], "--device", "cuda"]
    learning = ("--refit-every", "2", "--refit-epochs", "2", "--height", "--exploration", "boltzmann")
    for episodes, resume in (("3", ()), ("5", ("--resume",))):
        result = run_script(
            "train",
            "--agent",
            "pose",
            "--rgb",
            "--episodes",
            episodes,
            "--num-envs",
            "2",
            *cuda,
            *learning,
            *resume,
            cwd=workdir,
        )
        assert result.returncode == 0, result.stderr
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ("policy_net_state_dict", "replay_memory"))
    assert state["episode"] == 5 and len(state["replay_memory"]["rewards"]) == 5
    nets = {}
    for device in ("cpu", "cuda"):
        nets[device] = GraspNet.from_config(state["config"]).to(device).eval()
        nets[device].load_state_dict(state["policy_net_state_dict"])
    frames = state["replay_memory"]["frames"][:2].float() / 255
    poses = state["replay_memory"]["poses"][:2, None]
    with torch.no_grad():
        on_cpu, on_cuda = nets["cpu"](frames, poses), nets["cuda"](frames.cuda(), poses.cuda()).cpu()
    assert torch.allclose(on_cpu, on_cuda, atol=1e-4), (on_cpu, on_cuda)
    result = run_script(
        "eval", "--checkpoint", "policy_dqn.resume.pt", "--episodes", "2", "--max-steps", "3", "--num-envs", "2",
        "--device", "cuda", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "Success rate: 0/2" in result.stdout


@pytest.mark.slow
def test_a_sigterm_during_a_refit_stops_the_run_at_once_with_its_state_saved(workdir):
    """A refit of 100,000 passes would take hours: the run must stop within seconds of the signal, keep the network
    the refit started from, and leave the refit to the resumed run."""
    flags = ("--agent", "pose", "--refit-every", "3", *TINY, "--logdir", "runs/r")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bullet_kuka_train.py"), "--episodes", "6", "--refit-epochs", "100000", *flags],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not episodes_logged(workdir / "runs" / "r") == [0, 1, 2]:
        time.sleep(0.5)  # each episode is in TensorBoard within a second of its end; the refit follows the third
    time.sleep(2)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 20, "stopped within seconds, not after the refit"
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Terminated after 3 episodes: state saved to policy_dqn.resume.pt" in stdout
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ("policy_net_state_dict",))
    assert state["episode"] == 3 and state["refit_owed"] is True

    result = run_script("train", "--resume", "--episodes", "4", "--refit-epochs", "1", *flags, cwd=workdir)
    assert_one_line_error(result, "--refit-epochs 1 (saved: 100000)")
    result = run_script(
        "train", "--resume", "--episodes", "4", "--refit-epochs", "1", "--change-hyperparameters", *flags, cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(workdir / "policy_dqn.resume.pt", CPU, ("policy_net_state_dict",))
    assert state["episode"] == 4 and state["refit_owed"] is False, "the resumed run made the owed refit"
    scalars, _ = read_events(workdir / "runs" / "r")
    assert [step for step, _ in scalars["loss"]] == [3], "its loss logged at the episode it follows"


def episodes_logged(logdir: Path) -> list[int]:
    """The episodes whose epsilon a run has written to TensorBoard so far."""
    if not logdir.exists():
        return []
    return [step for step, _ in read_events(logdir)[0].get("epsilon", [])]


@pytest.mark.slow
def test_a_resume_with_the_other_agent_is_refused_in_one_line(workdir):
    result = run_script(
        "train",
        "--episodes",
        "1",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--clip-every",
        "0",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    result = run_script("train", "--agent", "pose", "--episodes", "2", "--resume", *TINY, cwd=workdir)
    assert_one_line_error(result, "policy_dqn.resume.pt was saved by a run with --agent dqn")
    (workdir / "policy_dqn.resume.pt").rename(workdir / "dqn.resume.pt")
    result = run_script("train", "--agent", "pose", "--episodes", "1", *TINY, cwd=workdir)
    assert result.returncode == 0, result.stderr
    result = run_script("train", "--episodes", "2", "--resume", "--max-steps", "3", "--device", "cpu", cwd=workdir)
    assert_one_line_error(result, "policy_dqn.resume.pt was saved by a run with --agent pose")


@pytest.mark.slow
def test_the_shipped_policy_is_a_pose_agent_the_eval_script_rebuilds(workdir):
    checkpoint = ROOT / "pretrained" / "pose_agent.pt"
    assert (ROOT / "pretrained" / "policy_dqn.pt").read_bytes() == checkpoint.read_bytes(), "the earlier name works"
    state = load_checkpoint(checkpoint, CPU, ("policy_net_state_dict",))
    assert pose_config(state, checkpoint) == {
        "agent": "pose",
        "image_size": 96,
        "rgb": True,
        "height": True,
        "patch_scales": 2,
        "overhead": False,
    }
    result = run_script("eval", "--checkpoint", str(checkpoint), "--episodes", "1", "--device", "cpu", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "greedy policy on test objects" in result.stdout
