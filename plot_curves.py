"""Plot training runs from their TensorBoard logs: success over the last 100 episodes, and epsilon.

    python plot_curves.py runs/kuka_dqn_1_1764000000                  # one run, into curves.png
    python plot_curves.py runs/a runs/b --names lecture fast --out compare.png

Each argument is a --logdir of bullet_kuka_train.py; a resumed run's folder holds all its pieces.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from grasping.checkpoints import atomic_write, check_writable_folder
from grasping.cli import OneLineArgumentParser, UsageError, report_errors

CURVES = (("success_rate_last_100", "success over the last 100 episodes (%)"), ("epsilon", "epsilon"))
"""The scalars plotted, as bullet_kuka_train.py logs them against the episode number, and their axis labels."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Plot bullet_kuka_train.py runs from their TensorBoard logs into a PNG.")
    parser.add_argument("logdirs", type=Path, nargs="+", help="TensorBoard folders of training runs (--logdir)")
    parser.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="a legend name for each folder, in the same order (default: the folders' names)",
    )
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="the PNG file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.logdirs):
        parser.error(f"argument --names: {len(args.names)} name(s) for {len(args.logdirs)} folder(s)")
    if args.out.suffix.lower() != ".png":
        parser.error(f"argument --out: the file name must end in .png, got {args.out}")
    return args


def read_curves(logdir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{tag: (episodes, values)} for CURVES; where a resumed run logged an episode twice, the later value counts."""
    if not logdir.is_dir():
        raise UsageError(f"{logdir}: no such folder")
    if not any(logdir.glob("*tfevents*")):
        raise UsageError(f"{logdir}: no TensorBoard event files in this folder")
    accumulator = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep every point
    accumulator.Reload()
    curves = {}
    for tag, _ in CURVES:
        if tag not in accumulator.Tags()[SCALARS]:
            raise UsageError(f"{logdir}: no {tag!r} scalars; is it the --logdir of a bullet_kuka_train.py run?")
        by_episode = {event.step: event.value for event in sorted(accumulator.Scalars(tag), key=lambda e: e.wall_time)}
        episodes = sorted(by_episode)
        curves[tag] = episodes, [by_episode[episode] for episode in episodes]
    return curves


def plot(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise UsageError(f"--out {args.out}: the file exists; pass --overwrite to replace it, or another name")
    check_writable_folder(args.out.parent, "--out")
    names = args.names or [logdir.resolve().name for logdir in args.logdirs]
    runs = [(name, read_curves(logdir)) for name, logdir in zip(names, args.logdirs)]

    figure = Figure(figsize=(8, 6.5))  # no pyplot: files only, no display needed
    axes = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for name, curves in runs:
        for axis, (tag, _) in zip(axes, CURVES):
            axis.plot(*curves[tag], label=name, linewidth=1.2)
    for axis, (_, label) in zip(axes, CURVES):
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylim(0, 100)
    axes[0].legend(loc="upper left")
    axes[1].set_xlabel("episode")
    figure.suptitle("DQN grasping with KukaDiverseObjectEnv: training runs")
    figure.tight_layout()
    with atomic_write(args.out) as handle:
        figure.savefig(handle, format="png", dpi=110)
    print(f"Plotted {len(runs)} run{'s' if len(runs) > 1 else ''} into {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report_errors(lambda: plot(args))


if __name__ == "__main__":
    sys.exit(main())
