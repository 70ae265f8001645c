"""Does a run's Q-network generalise? Two probes on the transitions its replay memory holds.

    python benchmarks/research/probe.py benchmarks/results/fast-a/policy_dqn.resume.pt \\
        --checkpoint benchmarks/results/fast-a/policy_dqn.pt

Each transition is labelled with its episode's outcome (1: an object was lifted). Scores are
areas under the ROC curve (AUC): the chance that a success scores above a failure; 0.5 is chance.

1. --checkpoint's Q(s, a) against the outcome, on the transitions it could have trained on and on
   those of the episodes collected after it was saved: each stream's newest
   (E_state - E_checkpoint) / N episodes, N the number of streams, which it never saw.
2. A supervised probe: a fresh lecture network with one output learns the outcome from the late
   states (t >= 4, where the outcome is mostly settled) of each stream's older 80%, with random
   shifts and weight decay, and is scored on the newest 20%; with a quarter, half and all of the
   training states, to show how the score grows with data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import DQN, Batch, Observation, ReplayMemory, random_shift, to_float
from grasping.checkpoints import checkpoint_config, load_checkpoint, load_state, observation_of
from grasping.cli import OneLineArgumentParser


def roc_auc(scores: np.ndarray, outcomes: np.ndarray) -> float:
    """The chance that a random success scores above a random failure, ties counting half; NaN without both.

    The rank (Mann-Whitney) formula: one sort, where comparing every success with every failure would
    take memory that grows with their product.
    """
    success = outcomes > 0.5
    n_success, n_failure = int(success.sum()), int((~success).sum())
    if not n_success or not n_failure:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_ranks = np.cumsum(counts) - (counts - 1) / 2  # tied scores share the mean of their ranks (from 1)
    rank_sum = mean_ranks[inverse.reshape(-1)][success].sum()
    return float((rank_sum - n_success * (n_success + 1) / 2) / (n_success * n_failure))


def probe_network(network: type[DQN], size: int, channels: int, outputs: int) -> DQN:
    """A Q-network of class `network` for images of `channels` channels, whatever its stack would take."""

    class Probe(network):  # type: ignore[valid-type, misc]
        def build_convolutions(self, in_channels: int, h: int, w: int) -> int:
            return super().build_convolutions(channels, h, w)

    return Probe(size, size, outputs)


def stream_transitions(memory: ReplayMemory, stream: int) -> Batch:
    """Every transition `memory` could sample from `stream`, oldest first, as one batch."""
    steps = np.arange(memory.oldest[stream], memory.pushed[stream])
    return memory.gather(np.full(len(steps), stream), steps, 1, 1.0)


def with_outcomes(batch: Batch) -> Batch:
    """A stream's transitions of finished episodes, with `reward` replaced by their episode's outcome."""
    ends = np.flatnonzero(batch.done.numpy())
    finished = int(ends[-1]) + 1 if len(ends) else 0
    outcome = batch.reward.numpy()[ends[np.searchsorted(ends, np.arange(finished))]]
    return Batch(*(field[:finished] for field in batch if field is not None))._replace(reward=torch.from_numpy(outcome))


def newest_episodes(batch: Batch, episodes: int) -> np.ndarray:
    """Mask of a stream's transitions (oldest first) that belong to its last `episodes` finished episodes."""
    ends = np.flatnonzero(batch.done.numpy())
    first = ends[-episodes - 1] + 1 if 0 < episodes < len(ends) else (0 if episodes else len(ends))
    mask = np.zeros(len(batch.done), dtype=bool)
    mask[first:] = True
    return mask


def probe_checkpoint(net: DQN, batches: list[Batch], unseen: list[np.ndarray]) -> None:
    with torch.no_grad():
        scores = np.concatenate(
            [net(to_float(b.state), b.timestep).gather(1, b.action[:, None])[:, 0].numpy() for b in batches]
        )
    outcomes = np.concatenate([b.reward.numpy() for b in batches])
    late = np.concatenate([b.timestep.numpy() >= 4 for b in batches])
    new = np.concatenate(unseen)
    for label, mask in (("it trained on", ~new), ("it never saw", new)):
        auc, late_auc = roc_auc(scores[mask], outcomes[mask]), roc_auc(scores[mask & late], outcomes[mask & late])
        print(f"Q(s, a) of the checkpoint on {mask.sum()} transitions {label}: AUC {auc:.3f} (t >= 4: {late_auc:.3f})")


def fit_outcome(
    net: nn.Module,
    images: torch.Tensor,
    outcomes: torch.Tensor,
    train: np.ndarray,
    test: np.ndarray,
    epochs: int,
    rng: np.random.Generator,
    lr: float,
    weight_decay: float,
    batch_size: int,
    pad: int,
) -> list[float]:
    """Held-out AUC after each epoch of training `net`'s one output as the outcome's logit, with random shifts."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    scores = []
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(net(random_shift(images[index], pad))[:, 0], outcomes[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(images[test[i : i + 256]])[:, 0] for i in range(0, len(test), 256)])
        scores.append(roc_auc(logits.numpy(), outcomes[test].numpy()))
    return scores


def supervised_probe(batches: list[Batch], observation: Observation, epochs: int, seed: int) -> None:
    held_out = [np.arange(len(b.reward)) >= 0.8 * len(b.reward) for b in batches]
    late = [b.timestep.numpy() >= 4 for b in batches]
    states = torch.cat([to_float(b.state) for b in batches])
    outcomes = torch.cat([b.reward for b in batches])
    test = np.flatnonzero(np.concatenate([h & t for h, t in zip(held_out, late)]))
    train_all = np.flatnonzero(np.concatenate([~h & t for h, t in zip(held_out, late)]))
    rng = np.random.default_rng(seed)
    for fraction in (0.25, 0.5, 1.0):
        torch.manual_seed(seed)
        train = train_all[: int(len(train_all) * fraction)]
        scores = fit_outcome(
            DQN.for_observation(observation, 1),
            states,
            outcomes,
            train,
            test,
            epochs,
            rng,
            lr=1e-4,
            weight_decay=1e-3,
            batch_size=32,
            pad=4,
        )
        print(
            f"supervised probe, late states: trained on {len(train)}, held out {len(test)}, "
            f"best held-out AUC over {epochs} epochs {max(scores):.3f}"
        )


def main() -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", type=Path, help="a run's resumable state (NAME.resume.pt), replay memory included")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="a best model saved earlier in the same run, for probe 1"
    )
    parser.add_argument("--epochs", type=int, default=12, help="epochs of the supervised probe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    cpu = torch.device("cpu")
    state = load_checkpoint(args.state, cpu, ("replay_memory", "episode"))
    saved = state["replay_memory"]
    num_streams, slots = saved["frames"].shape[:2]
    observation = observation_of(checkpoint_config(state, args.state))
    memory = ReplayMemory((slots - 5) * num_streams, num_streams=num_streams, frame_shape=observation.frame_shape)
    memory.load_state_dict(saved)
    finished = [with_outcomes(stream_transitions(memory, stream)) for stream in range(num_streams)]
    print(
        f"{args.state}: episode {state['episode']}, {sum(len(b.reward) for b in finished)} transitions "
        f"in {num_streams} streams, success rate {torch.cat([b.reward for b in finished]).mean():.3f}"
    )

    if args.checkpoint is not None:
        checkpoint = load_checkpoint(args.checkpoint, cpu, ("policy_net_state_dict", "episode"))
        net = DQN.from_config(
            checkpoint_config(checkpoint, args.checkpoint),
            int(checkpoint["policy_net_state_dict"]["head.bias"].shape[0]),
        )
        load_state(net, checkpoint, "policy_net_state_dict", args.checkpoint)
        net.eval()
        after = max(0, state["episode"] - checkpoint["episode"]) // num_streams
        print(
            f"{args.checkpoint}: saved at episode {checkpoint['episode']}; "
            f"never seen: each stream's last {after} episodes"
        )
        probe_checkpoint(net, finished, [newest_episodes(b, after) for b in finished])
    supervised_probe(finished, observation, args.epochs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
