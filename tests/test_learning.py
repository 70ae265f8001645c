"""The network, the replay memory, the epsilon schedule, acting and one optimisation step."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from common import (
    DQN,
    STACK_SIZE,
    ReplayMemory,
    Transition,
    conv2d_size_out,
    epsilon_by_episode,
    greedy_action,
    optimize_model,
    select_action,
    wilson_interval,
)

# The lecture's layers, by name and shape, for a 40x40 input and 7 actions.
LECTURE_STATE_DICT_SHAPES = {
    "conv1.weight": (32, STACK_SIZE, 8, 8), "conv1.bias": (32,),
    "bn1.weight": (32,), "bn1.bias": (32,), "bn1.running_mean": (32,), "bn1.running_var": (32,),
    "bn1.num_batches_tracked": (),
    "conv2.weight": (64, 32, 4, 4), "conv2.bias": (64,),
    "bn2.weight": (64,), "bn2.bias": (64,), "bn2.running_mean": (64,), "bn2.running_var": (64,),
    "bn2.num_batches_tracked": (),
    "conv3.weight": (64, 64, 3, 3), "conv3.bias": (64,),
    "linear.weight": (512, 64), "linear.bias": (512,),
    "head.weight": (7, 512), "head.bias": (7,),
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


def transition(i: int, terminal: bool = False) -> Transition:
    return Transition(torch.full((1, 1), float(i)), torch.tensor([[i % 7]]),
                      None if terminal else torch.full((1, 1), i + 0.5), torch.tensor([float(i % 2)]))


def test_replay_memory_returns_what_was_pushed_and_wraps():
    memory = ReplayMemory(5, random.Random(0))
    for i in range(3):
        memory.push(*transition(i, terminal=(i == 2)))
    assert len(memory) == 3
    batch = memory.sample(3)
    assert sorted(t.state.item() for t in batch) == [0.0, 1.0, 2.0]
    by_state = {t.state.item(): t for t in batch}
    assert by_state[2.0].next_state is None
    assert by_state[1.0].next_state.item() == 1.5 and by_state[1.0].reward.item() == 1.0
    assert by_state[1.0].action.item() == 1

    for i in range(3, 12):
        memory.push(*transition(i))
    assert len(memory) == 5
    assert sorted(t.state.item() for t in memory.sample(5)) == [7.0, 8.0, 9.0, 10.0, 11.0]
    with pytest.raises(ValueError):
        memory.sample(6)


def test_replay_sampling_follows_its_generator():
    first, second = ReplayMemory(100, random.Random(3)), ReplayMemory(100, random.Random(3))
    for i in range(50):
        first.push(*transition(i))
        second.push(*transition(i))
    assert [t.state.item() for t in first.sample(10)] == [t.state.item() for t in second.sample(10)]


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
    state = torch.rand(1, STACK_SIZE, 40, 40)

    action = greedy_action(net, state)

    assert net.training, "acting restores the mode it found"
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"acting changed {key}"
    net.eval()
    with torch.no_grad():
        assert action == net(state).argmax(dim=1).item()


def test_epsilon_greedy_explores_and_exploits():
    net = DQN(40, 40, 7)
    state = torch.rand(1, STACK_SIZE, 40, 40)
    greedy = greedy_action(net, state)
    rng = random.Random(0)
    assert {select_action(net, state, 0.0, 7, rng) for _ in range(20)} == {greedy}
    assert {select_action(net, state, 1.0, 7, rng) for _ in range(300)} == set(range(7))


def constant_q_network(values: list[float]) -> DQN:
    """A real DQN whose every output row is `values`: head weights zero, head bias = values."""
    net = DQN(40, 40, len(values))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(values))
    return net


def test_one_optimisation_step_against_hand_computed_targets():
    gamma = 0.99
    policy_net = constant_q_network([0.5, 1.0, 0.2, 3.0, 0.0, 0.0, 0.0])
    target_net = constant_q_network([0.1, 0.7, 0.3, 0.0, 0.0, 0.2, 0.4])
    target_net.eval()
    memory = ReplayMemory(10, random.Random(0))
    # (action, reward, terminal): next-state value 0.7 from the target net unless terminal
    steps = [(0, 0.0, False), (1, 1.0, True), (2, 0.0, False), (3, 1.0, True)]
    for action, reward, terminal in steps:
        state = torch.rand(1, STACK_SIZE, 40, 40)
        memory.push(state, torch.tensor([[action]]), None if terminal else torch.rand(1, STACK_SIZE, 40, 40),
                    torch.tensor([reward]))
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-4)
    bias_before = policy_net.head.bias.detach().clone()

    loss, mean_q = optimize_model(policy_net, target_net, optimizer, memory, batch_size=4, gamma=gamma)

    # targets: 0 + 0.99 * 0.7, 1, 0 + 0.99 * 0.7, 1; Q(s, a): 0.5, 1.0, 0.2, 3.0
    # differences -0.193, 0, -0.493, 2 -> Huber 0.5 d^2 below 1, |d| - 0.5 above
    expected_loss = (0.5 * 0.193**2 + 0 + 0.5 * 0.493**2 + 1.5) / 4
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert mean_q.item() == pytest.approx((0.5 + 1.0 + 0.2 + 3.0) / 4, abs=1e-6)
    # Gradients were clamped to [-1, 1] and Adam moved the taken actions' values toward their targets.
    for param in policy_net.parameters():
        assert param.grad.abs().max() <= 1.0
    moved = policy_net.head.bias.detach() - bias_before
    assert moved[0] > 0 and moved[2] > 0 and moved[3] < 0 and moved[1] == 0
    assert torch.equal(moved[4:], torch.zeros(3))


def test_optimisation_waits_for_a_batch_and_copes_with_only_terminal_states():
    policy_net, target_net = DQN(40, 40, 7), DQN(40, 40, 7)
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-4)
    memory = ReplayMemory(10, random.Random(0))
    for _ in range(3):
        memory.push(torch.rand(1, STACK_SIZE, 40, 40), torch.tensor([[0]]), None, torch.tensor([1.0]))
    assert optimize_model(policy_net, target_net, optimizer, memory, batch_size=4, gamma=0.99) is None
    memory.push(torch.rand(1, STACK_SIZE, 40, 40), torch.tensor([[0]]), None, torch.tensor([1.0]))
    q = policy_net.train()(torch.cat([t.state for t in memory.memory])).gather(1, torch.zeros(4, 1, dtype=torch.long))
    expected = F.smooth_l1_loss(q, torch.ones(4, 1)).item()
    loss, _ = optimize_model(policy_net, target_net, optimizer, memory, batch_size=4, gamma=0.99)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_wilson_interval():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
