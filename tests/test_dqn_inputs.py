"""The DQN's opt-in inputs: the episode's first frame beside the stack, and the commanded pose."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import stream_transitions

from common import DQN, POSE_FEATURES, STACK_SIZE, FrameStack, ReplayMemory, optimize_model
from grasping.checkpoints import LECTURE_CONFIG, checkpoint_config
from grasping.dqn import DQNPolicy
from grasping.kinematics import START_POSE, Pose, move, pose_features, pose_features_after, poses_after

MAX_STEPS = 9


def features(pose: Pose) -> np.ndarray:
    """One commanded pose as the network's input (POSE_FEATURES,)."""
    return pose_features(np.array([pose]))[0]


def play(
    memory: ReplayMemory, policy: DQNPolicy, rng: np.random.Generator, episodes: int, streams: int = 2
) -> list[dict]:
    """Synthetic episodes (random frames, lengths 1 to MAX_STEPS) in `streams` environments taking turns,
    acted on by `policy` with epsilon 0.5 and stored in `memory`; returns every transition as the policy
    saw it: its stream, state, first frame and commanded pose, and the pose after its action."""
    seen = []
    for _ in range(episodes):
        for stream in range(streams):
            length = int(rng.integers(1, MAX_STEPS + 1))
            stack = FrameStack()
            first = rng.integers(0, 256, (40, 40), dtype=np.uint8)
            state = stack.reset(first)
            for t in range(length):
                pose = policy.episodes.poses[stream] if t else START_POSE
                [action] = policy(state[None], [stream], [t], epsilon=0.5)
                assert policy.episodes.poses[stream] == move(pose, action)
                next_state = None if t == length - 1 else stack.push(rng.integers(0, 256, (40, 40), dtype=np.uint8))
                memory.push(state, action, next_state, 0.0, stream)
                seen.append(
                    dict(
                        stream=stream,
                        state=state,
                        first=first,
                        pose=pose,
                        after=policy.episodes.poses[stream],
                        done=next_state is None,
                    )
                )
                if next_state is not None:
                    state = next_state
    return seen


@pytest.mark.parametrize("capacity", [400, 24])  # 24: each stream's 12 slots wrap many times
def test_memory_gives_each_state_its_episodes_first_frame_and_commanded_pose(capacity):
    rng = np.random.default_rng(0)
    memory = ReplayMemory(
        capacity,
        num_streams=2,
        seed=0,
        first_frame=True,
        pose_features=pose_features_after,
        max_episode_steps=MAX_STEPS,
    )
    net = DQN(40, 40, 7, first_frame_input=True, pose_input=True)
    seen = play(memory, DQNPolicy(net, 7, random.Random(0)), rng, episodes=30)
    for stream in range(2):
        ours = [t for t in seen if t["stream"] == stream][-(capacity // 2) :]
        batch = stream_transitions(memory, stream)
        assert batch.pose is not None and batch.next_pose is not None
        assert len(batch.state) == len(ours) > 5
        for i, transition in enumerate(ours):
            assert np.array_equal(batch.state[i, 0].numpy(), transition["first"])
            assert np.array_equal(batch.state[i, 1:].numpy(), transition["state"])
            assert np.array_equal(batch.pose[i].numpy(), features(transition["pose"]))
            if not transition["done"]:
                assert np.array_equal(batch.next_pose[i].numpy(), features(transition["after"]))
                assert np.array_equal(batch.next_state[i, 0].numpy(), transition["first"])


def test_n_step_next_pose_follows_n_actions():
    rng = np.random.default_rng(1)
    memory = ReplayMemory(400, num_streams=1, seed=0, pose_features=pose_features_after, max_episode_steps=MAX_STEPS)
    seen = play(memory, DQNPolicy(DQN(40, 40, 7, pose_input=True), 7, random.Random(1)), rng, 20, streams=1)
    batch = stream_transitions(memory, 0, n_step=3)
    assert batch.pose is not None and batch.next_pose is not None
    for i in range(len(batch.pose)):
        if not batch.done[i]:
            assert np.array_equal(batch.next_pose[i].numpy(), features(seen[i + 2]["after"]))
    assert batch.state.shape[1] == STACK_SIZE  # no first frame unless asked for


def test_poses_after_clamps_in_order():
    actions = np.array([[2, 2, 2, 1, 1, 1, 1], [4] * 7, [6, 6, 5, 0, 0, 0, 0]])
    expected = [START_POSE, START_POSE, START_POSE]
    for row in range(3):
        for action in actions[row, :5]:
            expected[row] = move(expected[row], int(action))
    assert [tuple(p) for p in poses_after(actions, np.array([5, 5, 5])).tolist()] == expected
    assert expected[0] == (530, 0, 0)  # 597, 657 clamped to 650, 650, then two steps back


def test_pose_features_are_of_order_one_and_half_turn_symmetric():
    values = pose_features(np.array([[500, -170, 0], [650, 220, 0], [575, 25, 4 * np.pi / 0.25 / 4]]))
    assert values.shape == (3, POSE_FEATURES) and values.dtype == np.float32
    assert np.allclose(values[0], [-1.0, -1.0, 0.0, 1.0])
    assert np.allclose(values[1], [1.0, 1.0, 0.0, 1.0])
    assert np.allclose(values[2, 2:], [0.0, 1.0], atol=1e-6)  # half a turn: the same gripper


def test_inputs_change_the_network_and_its_values():
    net = DQN(40, 40, 7, first_frame_input=True, pose_input=True).eval()
    assert net.conv1.in_channels == STACK_SIZE + 1
    assert net.linear.in_features == 64 + POSE_FEATURES
    states = torch.rand(2, STACK_SIZE + 1, 40, 40)
    poses = torch.from_numpy(pose_features(np.array([[537, 0, 0], [537, 0, 0]])))
    moved = torch.from_numpy(pose_features(np.array([[597, 60, 1], [537, 0, 0]])))
    with torch.no_grad():
        before, after = net(states, pose=poses), net(states, pose=moved)
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])
    with pytest.raises(ValueError, match="commanded pose"):
        net(states)


def test_config_records_the_inputs_and_older_checkpoints_load_as_the_lectures(tmp_path):
    net = DQN(40, 40, 7, first_frame_input=True, pose_input=True)
    config = checkpoint_config({"config": net.config}, tmp_path / "a.pt")
    assert config["first_frame_input"] and config["pose_input"]
    rebuilt = DQN.from_config(config, 7)
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    older = {key: LECTURE_CONFIG[key] for key in ("timestep_input", "image_size", "rgb", "network")}
    assert checkpoint_config({"config": older}, tmp_path / "b.pt") == LECTURE_CONFIG
    assert not LECTURE_CONFIG["first_frame_input"] and not LECTURE_CONFIG["pose_input"]


@pytest.mark.slow
def test_optimisation_learns_the_value_of_a_pose_it_cannot_see():
    """The frames are noise and the timestep is not an input; the reward is 1 where the first action was x+, so
    only the commanded pose tells a rewarded state from another."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    memory = ReplayMemory(2000, seed=0, pose_features=pose_features_after, max_episode_steps=2)
    for _ in range(300):
        first_action = int(rng.integers(0, 7))
        stack = FrameStack()
        state = stack.reset(rng.integers(0, 256, (40, 40), dtype=np.uint8))
        next_state = stack.push(rng.integers(0, 256, (40, 40), dtype=np.uint8))
        memory.push(state, first_action, next_state, 0.0)
        memory.push(next_state, 0, None, float(first_action == 2))
    policy_net, target_net = DQN(40, 40, 7, pose_input=True), DQN(40, 40, 7, pose_input=True)
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-3)
    for _ in range(500):
        optimize_model(policy_net, target_net, optimizer, memory, 32, gamma=0.0)  # each transition its own reward
    states = torch.rand(1, STACK_SIZE, 40, 40).expand(2, -1, -1, -1)
    poses = torch.from_numpy(pose_features(np.array([[597, 0, 0], [537, 0, 1]])))  # after x+, after turn+
    with torch.no_grad():
        values = policy_net.eval()(states, pose=poses)[:, 0]
    assert values[0] - values[1] > 0.25, values
