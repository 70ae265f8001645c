"""The network, the replay memory, the epsilon schedule, acting and one optimisation step."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import stream_transitions, taken

from common import (
    DQN,
    SCREEN_SIZE,
    STACK_SIZE,
    TIMESTEP_SCALE,
    FineDQN,
    FrameStack,
    Observation,
    ReplayMemory,
    conv2d_size_out,
    epsilon_by_episode,
    greedy_actions,
    optimize_model,
    random_shift,
    select_actions,
    soft_update,
    to_float,
)
from grasping.checkpoints import LECTURE_CONFIG
from grasping.stats import wilson_interval

# The lecture's layers, by name and shape, for a 40x40 input and 7 actions.
LECTURE_STATE_DICT_SHAPES = {
    "conv1.weight": (32, STACK_SIZE, 8, 8),
    "conv1.bias": (32,),
    "bn1.weight": (32,),
    "bn1.bias": (32,),
    "bn1.running_mean": (32,),
    "bn1.running_var": (32,),
    "bn1.num_batches_tracked": (),
    "conv2.weight": (64, 32, 4, 4),
    "conv2.bias": (64,),
    "bn2.weight": (64,),
    "bn2.bias": (64,),
    "bn2.running_mean": (64,),
    "bn2.running_var": (64,),
    "bn2.num_batches_tracked": (),
    "conv3.weight": (64, 64, 3, 3),
    "conv3.bias": (64,),
    "linear.weight": (512, 64),
    "linear.bias": (512,),
    "head.weight": (7, 512),
    "head.bias": (7,),
}


def test_conv_size_formula():
    assert conv2d_size_out(40, 8, 4) == 9
    assert conv2d_size_out(9, 4, 2) == 3
    assert conv2d_size_out(3, 3, 1) == 1
    assert conv2d_size_out(10, 4, 2) == 4  # the slide's example
    assert conv2d_size_out(10, 3, 1, padding=1) == 10


@pytest.mark.parametrize("size", [40, 48, 84])
def test_network_shapes_follow_the_formula(size):
    net = DQN(size, size, 7)
    after_convs = conv2d_size_out(conv2d_size_out(conv2d_size_out(size, 8, 4), 4, 2), 3, 1)
    assert net.linear.in_features == after_convs * after_convs * 64
    assert net(torch.rand(3, STACK_SIZE, size, size)).shape == (3, 7)


def test_state_dict_has_the_lectures_names_and_shapes():
    state_dict = DQN(40, 40, 7).state_dict()
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == LECTURE_STATE_DICT_SHAPES
    lecture_style = {k: torch.randn(s) if s else torch.tensor(3) for k, s in LECTURE_STATE_DICT_SHAPES.items()}
    net = DQN(40, 40, 7)
    net.load_state_dict(lecture_style, strict=True)
    assert torch.equal(net.head.bias, lecture_style["head.bias"])


@pytest.mark.parametrize("size, grid", [(40, 5), (48, 6), (96, 12)])
def test_the_fine_network_keeps_a_finer_grid_and_is_rebuilt_from_its_config(size, grid):
    net = FineDQN(size, size, 7, timestep_input=True, rgb=True)
    states = torch.rand(3, 3 * STACK_SIZE, size, size)
    assert net.convolutions(states).shape == (3, 64, grid, grid)
    assert net.linear.in_features == grid * grid * 64 + 1
    assert net(states, torch.tensor([0, 3, 6])).shape == (3, 7)
    assert net.config == {
        "timestep_input": True,
        "image_size": size,
        "rgb": True,
        "network": "fine",
        "first_frame_input": False,
        "pose_input": False,
    }
    rebuilt = DQN.from_config(net.config, 7)
    assert type(rebuilt) is FineDQN
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with pytest.raises(RuntimeError):
        DQN(size, size, 7, timestep_input=True, rgb=True).load_state_dict(net.state_dict(), strict=True)


def random_frame(rng: np.random.Generator, shape: tuple[int, ...] = (SCREEN_SIZE, SCREEN_SIZE)) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def episodes(
    rng: np.random.Generator, lengths: list[int], shape: tuple[int, ...] = (SCREEN_SIZE, SCREEN_SIZE)
) -> Iterator[tuple]:
    """Transitions (state, action, next_state, reward, done) of episodes of the given lengths, as FrameStack
    makes them."""
    for length in lengths:
        stack = FrameStack()
        state = stack.reset(random_frame(rng, shape))
        for t in range(length):
            done = t == length - 1
            next_state = None if done else stack.push(random_frame(rng, shape))
            yield state, int(rng.integers(7)), next_state, float(done and rng.random() < 0.5), done
            if next_state is not None:
                state = next_state


def push_streams(memory: ReplayMemory, streams: list[Iterator[tuple]]) -> list[tuple]:
    """Push the streams' transitions interleaved, one from each in turn; return them in push order."""
    pushed = []
    for batch in itertools.zip_longest(*streams):
        for stream, item in enumerate(batch):
            if item is not None:
                state, action, next_state, reward, _ = item
                memory.push(state, action, next_state, reward, stream)
                pushed.append(item)
    return pushed


def key(state, action, next_state, reward, done) -> tuple:
    """A transition as comparable bytes; a terminal transition's next state is not part of it."""
    return (
        np.asarray(state).tobytes(),
        int(action),
        None if done else np.asarray(next_state).tobytes(),
        float(reward),
        bool(done),
    )


def sampled_keys(memory: ReplayMemory, batch_size: int) -> list[tuple]:
    batch = memory.sample(batch_size)
    assert batch.state.dtype == batch.next_state.dtype == torch.uint8
    assert batch.state.shape == batch.next_state.shape == (batch_size, STACK_SIZE, *memory.frames.shape[2:])
    return [
        key(
            batch.state[i].numpy(),
            batch.action[i].item(),
            batch.next_state[i].numpy(),
            batch.reward[i].item(),
            batch.done[i].item(),
        )
        for i in range(batch_size)
    ]


def test_replay_memory_returns_exactly_what_was_pushed():
    rng = np.random.default_rng(0)
    memory = ReplayMemory(100, num_streams=3, seed=0)
    pushed = push_streams(memory, [episodes(rng, [1, 6, 2]), episodes(rng, [7, 3]), episodes(rng, [2, 2, 5, 1])])
    assert len(memory) == len(pushed) == 29
    assert sorted(sampled_keys(memory, 29)) == sorted(key(*t) for t in pushed)
    assert any(t[4] for t in pushed) and not all(t[4] for t in pushed)


def test_replay_memory_lists_a_streams_transitions_in_order():
    rng = np.random.default_rng(6)
    first, second = list(episodes(rng, [3, 4, 2])), list(episodes(rng, [5, 6]))
    memory = ReplayMemory(12, num_streams=2, seed=0)  # 6 per stream: the first stream wraps
    push_streams(memory, [iter(first), iter(second)])
    for stream, pushed in enumerate((first, second)):
        batch = stream_transitions(memory, stream)
        listed = [
            key(
                batch.state[i].numpy(),
                batch.action[i].item(),
                batch.next_state[i].numpy(),
                batch.reward[i].item(),
                batch.done[i].item(),
            )
            for i in range(len(batch.reward))
        ]
        assert listed == [key(*t) for t in pushed[-6:]]


def test_colour_frames_are_stored_sampled_and_fed_to_a_network_built_for_them():
    observation = Observation(36, rgb=True)
    rng = np.random.default_rng(9)
    memory = ReplayMemory(20, num_streams=2, seed=0, frame_shape=observation.frame_shape)
    pushed = push_streams(
        memory, [episodes(rng, [3, 4], observation.frame_shape), episodes(rng, [5], observation.frame_shape)]
    )
    assert memory.frames.shape[2:] == (3, 36, 36)
    assert sorted(sampled_keys(memory, len(pushed))) == sorted(key(*t) for t in pushed)

    batch = memory.sample(4)
    states = to_float(batch.state)
    assert states.shape == (4, 3 * STACK_SIZE, 36, 36)
    assert torch.equal(states[:, 3:6], batch.state[:, 1].float() / 255), "frame 1's colours are channels 3 to 5"
    net = DQN.for_observation(observation, 7)
    assert net.conv1.in_channels == 3 * STACK_SIZE and net(states).shape == (4, 7)
    assert net.config == {**LECTURE_CONFIG, "image_size": 36, "rgb": True}
    rebuilt = DQN.from_config(net.config, 7)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_replay_memory_wraps_around_at_capacity():
    rng = np.random.default_rng(1)
    memory = ReplayMemory(5, seed=0)
    pushed = push_streams(memory, [episodes(rng, [4, 3, 5])])
    assert len(memory) == 5
    assert sorted(sampled_keys(memory, 5)) == sorted(key(*t) for t in pushed[-5:])
    with pytest.raises(ValueError, match="cannot sample 6"):
        memory.sample(6)

    # Each of several streams keeps its own share: here the last 5 of each.
    memory = ReplayMemory(10, num_streams=2, seed=0)
    first, second = list(episodes(rng, [3, 6, 4])), list(episodes(rng, [8]))
    push_streams(memory, [iter(first), iter(second)])
    assert len(memory) == 10
    assert sorted(sampled_keys(memory, 10)) == sorted(key(*t) for t in first[-5:] + second[-5:])


def test_replay_memory_stores_each_frame_once_as_bytes():
    memory = ReplayMemory(10_000)
    assert memory.frames.dtype == torch.uint8
    assert memory.nbytes / 10_000 <= 2_000
    assert memory.nbytes <= 25 * 2**20
    rng = np.random.default_rng(2)
    push_streams(memory, [episodes(rng, [7] * 10)])
    assert memory.nbytes == ReplayMemory(10_000).nbytes, "allocated once, up front"


def test_replay_memory_refuses_a_state_that_does_not_continue_its_stream():
    rng = np.random.default_rng(3)
    memory = ReplayMemory(10)
    state, action, next_state, reward, _ = next(episodes(rng, [3]))
    memory.push(state, action, next_state, reward)
    with pytest.raises(ValueError, match="not the next_state"):
        memory.push(state, action, next_state, reward)
    with pytest.raises(ValueError, match="shifted by one new frame"):
        memory.push(next_state, action, state, reward)
    with pytest.raises(ValueError, match="first frame"):
        ReplayMemory(10).push(next_state, action, None, reward)


def test_replay_memory_state_resumes_without_the_unfinished_episodes(tmp_path):
    """A resumed run gets back every finished episode still held, and nothing of an unfinished one."""
    rng = np.random.default_rng(4)
    first = list(episodes(rng, [4, 6, 5]))  # its last episode is cut after 2 steps
    second = list(episodes(rng, [3, 9, 7]))  # wrapped around, its last episode cut after 6 steps
    first, second = first[:12], second[:18]
    memory = ReplayMemory(16, num_streams=2, seed=0)
    push_streams(memory, [iter(first), iter(second)])
    path = tmp_path / "memory.pt"
    torch.save(memory.state_dict(), path)

    restored = ReplayMemory(16, num_streams=2, seed=0)
    restored.load_state_dict(torch.load(path, weights_only=True))
    # Each stream's share is 8 transitions. The first held steps 4-11; its cut episode (steps
    # 10-11) goes. The second held steps 10-17, of which the cut episode took the last 6.
    expected = first[4:10] + second[10:12]
    assert len(restored) == len(expected) == 8
    assert sorted(sampled_keys(restored, 8)) == sorted(key(*t) for t in expected)
    assert all(t[4] for t in (first[9], second[11])), "each stream ends with a finished episode"

    # New episodes follow on in each stream, as after a reset of its environment.
    fresh = list(episodes(rng, [2]))
    push_streams(restored, [iter(fresh), iter([])])
    assert sorted(sampled_keys(restored, 10)) == sorted(key(*t) for t in expected + fresh)
    with pytest.raises(ValueError, match="saved for 2 stream"):
        ReplayMemory(16, num_streams=4).load_state_dict(memory.state_dict())


def test_replay_memory_gives_each_state_its_timestep():
    rng = np.random.default_rng(5)
    lengths = ([3, 5], [4, 2])
    streams = [list(episodes(rng, stream_lengths)) for stream_lengths in lengths]
    memory = ReplayMemory(100, num_streams=2, seed=0)
    push_streams(memory, [iter(stream) for stream in streams])
    timestep_of = {}
    for transitions, stream_lengths in zip(streams, lengths):
        steps = [t for length in stream_lengths for t in range(length)]
        timestep_of.update({np.asarray(state).tobytes(): t for (state, *_), t in zip(transitions, steps)})
    batch = memory.sample(12, n_step=2, gamma=0.9)  # each stream's newest transition waits for its next step
    # All but each stream's newest: timesteps 0 1 2 0 1 2 3 (4) and 0 1 2 3 0 (1).
    assert sorted(timestep_of[state.numpy().tobytes()] for state in batch.state) == sorted(
        [0, 1, 2, 0, 1, 2, 3] + [0, 1, 2, 3, 0]
    )
    for state, timestep, next_timestep in zip(batch.state, batch.timestep, batch.next_timestep):
        assert timestep.item() == timestep_of[state.numpy().tobytes()]
        assert next_timestep.item() == timestep.item() + 2


def test_timestep_input_adds_one_column_and_changes_the_values():
    net = DQN(40, 40, 7, timestep_input=True).eval()
    assert net.linear.weight.shape == (512, 64 + 1)
    assert DQN.from_config(net.config, 7).linear.weight.shape == (512, 65)
    assert DQN.from_config(LECTURE_CONFIG, 7).state_dict().keys() == LECTURE_STATE_DICT_SHAPES.keys()
    states = torch.rand(2, STACK_SIZE, 40, 40)
    with torch.no_grad():
        early, late = net(states, torch.tensor([0, 0])), net(states, torch.tensor([6, 6]))
    assert not torch.allclose(early, late)
    with pytest.raises(ValueError, match="timestep"):
        net(states)
    uint8_states = (states * 255).to(torch.uint8)
    with torch.no_grad():
        wanted = [net(to_float(uint8_states), torch.tensor([t, t])).argmax(dim=1).tolist() for t in (0, 6)]
    assert [greedy_actions(net, uint8_states.numpy(), [t, t]) for t in (0, 6)] == wanted


def test_replay_sampling_follows_its_seed():
    rng = np.random.default_rng(4)
    transitions = list(episodes(rng, [7] * 8))
    first, second, other = ReplayMemory(100, seed=3), ReplayMemory(100, seed=3), ReplayMemory(100, seed=4)
    for memory in (first, second, other):
        push_streams(memory, [iter(transitions)])
    assert sampled_keys(first, 10) == sampled_keys(second, 10) != sampled_keys(other, 10)


def test_epsilon_schedule_is_the_lectures():
    assert epsilon_by_episode(0, 0.9, 0.1, 10**4) == pytest.approx(0.9)
    assert epsilon_by_episode(5000, 0.9, 0.1, 10**4) == pytest.approx(0.4)
    assert epsilon_by_episode(8000, 0.9, 0.1, 10**4) == pytest.approx(0.1)
    assert epsilon_by_episode(24033, 0.9, 0.1, 10**4) == pytest.approx(0.1)


def test_acting_uses_running_statistics_and_leaves_them_alone():
    torch.manual_seed(0)
    net = DQN(40, 40, 7)
    net.train()
    net(torch.rand(8, STACK_SIZE, 40, 40))  # give BatchNorm non-trivial running statistics
    before = {k: v.clone() for k, v in net.state_dict().items()}
    states = np.random.default_rng(0).integers(0, 256, (4, STACK_SIZE, 40, 40), dtype=np.uint8)

    actions = greedy_actions(net, states)

    assert net.training, "acting restores the mode it found"
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), f"acting changed {name}"
    net.eval()
    with torch.no_grad():
        one_by_one = [net(to_float(torch.from_numpy(s[None]))).argmax(dim=1).item() for s in states]
    assert actions == one_by_one, "a batch acts as each state alone would: no batch statistics"


def test_epsilon_greedy_explores_and_exploits_in_one_forward_pass():
    torch.manual_seed(0)
    net = DQN(40, 40, 7)
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    states = np.random.default_rng(1).integers(0, 256, (6, STACK_SIZE, 40, 40), dtype=np.uint8)
    greedy = greedy_actions(net, states)
    calls.clear()
    rng = random.Random(0)
    assert select_actions(net, states, 0.0, 7, rng) == greedy
    assert calls == [6], "six states, one batched forward pass"
    calls.clear()
    explored = {a for _ in range(60) for a in select_actions(net, states, 1.0, 7, rng)}
    assert explored == set(range(7)) and calls == [], "pure exploration needs no forward pass"


def constant_q_network(values: list[float]) -> DQN:
    """A real DQN whose every output row is `values`: head weights zero, head bias = values."""
    net = DQN(40, 40, len(values))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(values))
    return net


POLICY_Q = [0.5, 1.0, 0.2, 3.0, 0.0, 0.0, 0.0]  # argmax: action 3
TARGET_Q = [0.1, 0.7, 0.3, 0.0, 0.0, 0.2, 0.4]  # max: 0.7, at the policy's argmax: 0.0


def one_step_memory() -> ReplayMemory:
    """Four one-step transitions, one per stream, as (action, reward, terminal)."""
    steps = [(0, 0.0, False), (1, 1.0, True), (2, 0.0, False), (3, 1.0, True)]
    memory = ReplayMemory(8, num_streams=4, seed=0)
    rng = np.random.default_rng(0)
    for stream, (action, reward, terminal) in enumerate(steps):
        stack = FrameStack()
        state = stack.reset(random_frame(rng))
        memory.push(state, action, None if terminal else stack.push(random_frame(rng)), reward, stream)
    return memory


def test_one_optimisation_step_against_hand_computed_targets():
    gamma = 0.99
    policy_net, target_net = constant_q_network(POLICY_Q), constant_q_network(TARGET_Q)
    target_net.eval()
    memory = one_step_memory()
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-4)
    bias_before = policy_net.head.bias.detach().clone()

    loss, mean_q = taken(optimize_model(policy_net, target_net, optimizer, memory, batch_size=4, gamma=gamma))

    # targets: 0 + 0.99 * 0.7, 1, 0 + 0.99 * 0.7, 1; Q(s, a): 0.5, 1.0, 0.2, 3.0
    # differences -0.193, 0, -0.493, 2 -> Huber 0.5 d^2 below 1, |d| - 0.5 above
    expected_loss = (0.5 * 0.193**2 + 0 + 0.5 * 0.493**2 + 1.5) / 4
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert mean_q.item() == pytest.approx((0.5 + 1.0 + 0.2 + 3.0) / 4, abs=1e-6)
    # Gradients were clamped to [-1, 1] and Adam moved the taken actions' values toward their targets.
    for param in policy_net.parameters():
        assert param.grad is not None and param.grad.abs().max() <= 1.0
    moved = policy_net.head.bias.detach() - bias_before
    assert moved[0] > 0 and moved[2] > 0 and moved[3] < 0 and moved[1] == 0
    assert torch.equal(moved[4:], torch.zeros(3))


def test_double_dqn_target_takes_the_policy_argmax_and_the_target_value():
    policy_net, target_net = constant_q_network(POLICY_Q), constant_q_network(TARGET_Q)
    target_net.eval()
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-4)

    loss, _ = taken(
        optimize_model(policy_net, target_net, optimizer, one_step_memory(), batch_size=4, gamma=0.99, double_dqn=True)
    )

    # The policy picks a' = 3 in every next state, where the target network says 0.0 (not its max, 0.7):
    # targets 0, 1, 0, 1 against Q(s, a) 0.5, 1.0, 0.2, 3.0 -> differences 0.5, 0, 0.2, 2
    expected_loss = (0.5 * 0.5**2 + 0 + 0.5 * 0.2**2 + 1.5) / 4
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert policy_net.training, "picking a' in eval mode leaves the network in train mode"


def timestep_q_network(values: list[float], slopes: list[float]) -> DQN:
    """A real DQN with --timestep-input whose Q(s, a) is values[a] + slopes[a] * t, whatever the image."""
    net = DQN(40, 40, len(values), timestep_input=True)
    with torch.no_grad():
        net.linear.weight.zero_()
        net.linear.bias.zero_()
        net.linear.weight[0, -1] = TIMESTEP_SCALE  # hidden unit 0 = t
        net.head.weight.zero_()
        net.head.weight[:, 0] = torch.tensor(slopes)
        net.head.bias.copy_(torch.tensor(values))
    return net


def test_optimisation_feeds_the_next_states_timestep_to_the_target():
    policy_net = timestep_q_network(POLICY_Q, [1.0] * 7)
    target_net = timestep_q_network(TARGET_Q, [0, 0, 0, 0, 0, 0, 1.0]).eval()
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-4)

    loss, mean_q = taken(optimize_model(policy_net, target_net, optimizer, one_step_memory(), batch_size=4, gamma=0.99))

    # States are at t = 0, so Q(s, a) is POLICY_Q; next states are at t = 1, where the target's
    # action 6 is worth 0.4 + 1 = 1.4, its max: targets 0.99 * 1.4 = 1.386, 1, 1.386, 1
    # against 0.5, 1.0, 0.2, 3.0 -> differences -0.886, 0, -1.186, 2
    expected_loss = (0.5 * 0.886**2 + 0 + (1.186 - 0.5) + 1.5) / 4
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert mean_q.item() == pytest.approx((0.5 + 1.0 + 0.2 + 3.0) / 4, abs=1e-6)


def states_of(transitions: list[tuple]) -> list[bytes]:
    return [t[0].tobytes() for t in transitions]


def sample_all(memory: ReplayMemory, n_step: int, gamma: float) -> dict[bytes, tuple]:
    """Every ready transition, by the bytes of its state: (reward, done, next_state bytes)."""
    batch = memory.sample(memory.sampleable(n_step), n_step, gamma)
    return {
        batch.state[i].numpy().tobytes(): (
            batch.reward[i].item(),
            batch.done[i].item(),
            batch.next_state[i].numpy().tobytes(),
        )
        for i in range(len(batch.reward))
    }


def test_n_step_returns_against_a_hand_worked_episode():
    rng = np.random.default_rng(6)
    episode = list(episodes(rng, [5]))
    episode = [(s, a, ns, 1.0 if done else 0.0, done) for s, a, ns, _, done in episode]  # success at the end
    after = list(episodes(rng, [3]))
    after = [(s, a, ns, 1.0, done) for s, a, ns, _, done in after]  # a reward every step, to catch leaks
    memory = ReplayMemory(20, seed=0)
    push_streams(memory, [iter(episode + after)])
    assert len(memory) == 8 and memory.sampleable(3) == 6, "the newest n - 1 wait for what follows them"

    sampled = sample_all(memory, n_step=3, gamma=0.9)
    states = states_of(episode)
    # step 0: r0 + .9 r1 + .81 r2 = 0, bootstraps from the state of step 3; step 1 from step 4
    assert sampled[states[0]] == (0.0, False, states[3])
    assert sampled[states[1]] == (0.0, False, states[4])
    # steps 2, 3, 4 reach the success at step 4 and stop there, nothing from the next episode: .81, .9, 1
    assert sampled[states[2]][:2] == (pytest.approx(0.81), True)
    assert sampled[states[3]][:2] == (pytest.approx(0.9), True)
    assert sampled[states[4]][:2] == (1.0, True)
    # the next episode's first transition: 1 + .9 + .81, and its episode ends within the 3 steps
    assert sampled[states_of(after)[0]][:2] == (pytest.approx(2.71), True)


def test_monte_carlo_returns_when_n_covers_the_episode():
    rng = np.random.default_rng(7)
    episode = [(s, a, ns, 1.0 if done else 0.0, done) for s, a, ns, _, done in episodes(rng, [6])]
    memory = ReplayMemory(100, seed=0)
    push_streams(memory, [iter(episode + list(episodes(rng, [7] * 4)))])
    sampled = sample_all(memory, n_step=20, gamma=0.9)
    for t, state in enumerate(states_of(episode)):
        reward, done, _ = sampled[state]
        assert reward == pytest.approx(0.9 ** (5 - t)) and done


def test_random_shift_keeps_shapes_and_moves_pixels():
    torch.manual_seed(0)
    images = torch.rand(6, STACK_SIZE, 40, 40)
    shifted = random_shift(images)
    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    assert not torch.equal(shifted, images)
    padded = F.pad(images, (4, 4, 4, 4), mode="replicate")
    for i in range(6):  # each image is one crop of its padded self, the same shift for all its frames
        crops = [padded[i, :, dy : dy + 40, dx : dx + 40] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(shifted[i], crop) for crop in crops)
    assert torch.equal(random_shift(images, pad=0), images)


def test_soft_update_averages_weights_and_running_statistics():
    torch.manual_seed(0)
    policy_net, target_net = DQN(40, 40, 7), DQN(40, 40, 7)
    policy_net(torch.rand(4, STACK_SIZE, 40, 40))  # move BatchNorm's running statistics and counter
    before = {k: v.clone() for k, v in target_net.state_dict().items()}
    soft_update(target_net, policy_net, tau=0.25)
    source = policy_net.state_dict()
    for name, value in target_net.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.25 * source[name] + 0.75 * before[name]), name
        else:
            assert torch.equal(value, source[name]), name


def test_optimisation_waits_for_a_batch_and_learns_from_terminal_rewards():
    torch.manual_seed(0)
    policy_net, target_net = DQN(40, 40, 7), DQN(40, 40, 7)
    target_net.eval()
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-4)
    memory = ReplayMemory(10, seed=0)
    rng = np.random.default_rng(5)
    states = [FrameStack().reset(random_frame(rng)) for _ in range(4)]
    for state in states[:3]:
        memory.push(state, 0, None, 1.0)
    assert optimize_model(policy_net, target_net, optimizer, memory, batch_size=4, gamma=0.99) is None
    memory.push(states[3], 0, None, 1.0)
    q = policy_net.train()(to_float(torch.from_numpy(np.stack(states))))[:, :1]
    expected = F.smooth_l1_loss(q, torch.ones(4, 1)).item()
    loss, _ = taken(optimize_model(policy_net, target_net, optimizer, memory, batch_size=4, gamma=0.99))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_wilson_interval():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
