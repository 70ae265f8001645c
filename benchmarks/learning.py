"""Learning curves: train one configuration and, every K episodes, measure its greedy success rate.

    python benchmarks/learning.py lecture                                   # the lecture's defaults
    python benchmarks/learning.py double-mc -- --double-dqn --n-step 20    # flags after -- go to training
    python benchmarks/learning.py lecture --minutes 9                       # again, until the budget is done

A configuration lives in benchmarks/results/NAME/: the run's checkpoints and TensorBoard logs,
config.json (its training flags, and this script's settings: a later call without them uses the
same, and refuses other evaluation scenes), learning.csv (one row per evaluation), learning.png, and
policies/episode-E.pt, the policy each evaluation played (lecture checkpoint keys). Each
evaluation plays the current policy greedily on --eval-episodes test-object and training-object
episodes, with the same scenes every time (--eval-seed); the random policy is measured once the same
way, as the line to beat. A call stops after --minutes (or on Ctrl-C or a kill, which it passes on to
the training; an evaluation under way is finished first) and the next call continues where it stopped
(training resumes from its saved state, replay memory included), so a long run can be done in pieces. Every call redraws
benchmarks/results/learning.png with all configurations. The saved states stay out of git: on a fresh clone, a call
for a configuration measured to its --episodes only redraws the plots, and one that would go further is refused.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import signal
import subprocess
import sys
import timeit
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure

from grasping.checkpoints import CHECKPOINT_KEYS, atomic_write, resume_path, save_checkpoint
from grasping.cli import (
    OneLineArgumentParser,
    Terminated,
    exit_status,
    positive_int,
    raise_terminated,
    resolve_device,
)
from grasping.evaluation import Evaluation, evaluate

ROOT = Path(__file__).resolve().parent.parent
"""The project folder: the training script and the results live there."""

FIELDS = ("episode", "train_seconds", "policy", "objects", "successes", "episodes", "rate", "ci_low", "ci_high")


RUN_SETTINGS = {
    "episodes": 3000,
    "eval_every": 250,
    "eval_episodes": 100,
    "eval_seed": 1000,
    "eval_envs": os.cpu_count(),
    "objects": "both",
}
"""This script's flags that config.json keeps, with their defaults for a new configuration."""
SCENE_SETTINGS = ("eval_episodes", "eval_seed", "eval_envs", "objects")
"""The settings that choose the evaluation scenes (worker i plays every N-th): fixed for a configuration's life."""


class OutOfTime(Exception):
    """This call's --minutes are spent; the next call goes on from here."""


def run_training(command: list[str], deadline: float) -> int:
    """Run the training script until it ends or the deadline passes, then Ctrl-C it (it saves its state); its
    exit status.

    The child gets SIGINT's default action even if this process was started with it ignored
    (nohup, a background job), or the Ctrl-C would not reach it.
    """
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _, stderr = process.communicate(timeout=max(1.0, deadline - timeit.default_timer()))
    except subprocess.TimeoutExpired:
        stop(process)
        raise OutOfTime from None
    except KeyboardInterrupt:  # the child has its own session: pass the Ctrl-C on, and wait for it
        stop(process)
        raise
    if process.returncode not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM):  # stopped: its state is saved
        last = (stderr.strip().splitlines() or ["(no message)"])[-1]
        sys.exit(f"error: {Path(command[1]).name} exited with {process.returncode}: {last}")
    return process.returncode


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C the child's session (training saves its state); kill it if it has not ended in 120 s."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def saved_state(folder: Path) -> tuple[int, float]:
    """Episodes trained and training seconds so far, from the run's resumable state."""
    path = resume_path(folder / "policy_dqn.pt")
    if not path.exists():
        return 0, 0.0
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state["episode"]), float(state["elapsed_seconds"])


def last_evaluation(folder: Path) -> int:
    """The episode of the configuration's last greedy evaluation in its learning.csv (0: none yet)."""
    return max((int(r["episode"]) for r in read_rows(folder / "learning.csv") if r["policy"] == "greedy"), default=0)


def snapshot(folder: Path, episode: int) -> Path:
    """The policy saved at `episode` as a checkpoint of its own, kept for every evaluation, so the best measured
    can be shipped. The resumable state (replay memory included) is read only if the file is not there yet."""
    path = folder / "policies" / f"episode-{episode}.pt"
    if not path.exists():
        state = torch.load(resume_path(folder / "policy_dqn.pt"), map_location="cpu", weights_only=True)
        path.parent.mkdir(exist_ok=True)
        save_checkpoint(path, {key: state[key] for key in (*CHECKPOINT_KEYS, "config") if key in state})
    return path


def evaluation_row(result: Evaluation, policy: str, objects: str, episode: int = 0, seconds: float = 0.0) -> dict:
    """An evaluation as a CSV row; `episode` and `seconds` are the training done so far (0 for the random policy)."""
    low, high = result.interval
    return {
        "episode": episode,
        "train_seconds": round(seconds, 1),
        "policy": policy,
        "objects": objects,
        "successes": result.successes,
        "episodes": result.episodes,
        "rate": result.successes / result.episodes,
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
    }


def measure(
    checkpoint: Path | None,
    objects: str,
    args: argparse.Namespace,
    deadline: float,
    episode: int = 0,
    seconds: float = 0.0,
) -> dict:
    """A checkpoint's greedy policy (None: the random policy) on the configuration's evaluation scenes, as a CSV
    row; not started once the call's minutes are spent."""
    if timeit.default_timer() > deadline:
        raise OutOfTime
    result = evaluate(
        checkpoint,
        args.eval_episodes,
        objects == "test",
        args.eval_seed,
        args.eval_envs,
        resolve_device(args.eval_device),
    )
    return evaluation_row(result, "greedy" if checkpoint else "random", objects, episode, seconds)


def cpu_name() -> str:
    """The processor's model name (Linux), or what the platform module knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device: str = "auto") -> str:
    """This machine as the results tables name it: cores, processor and GPU."""
    gpu = torch.cuda.get_device_name(0) if resolve_device(device).type == "cuda" else "no GPU"
    return f"{os.cpu_count()} cores ({cpu_name()}), {gpu}"


def read_config(path: Path, parser: argparse.ArgumentParser) -> dict:
    """The run's stored settings; a file that is not what this script wrote is refused in one line, not replaced."""
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        parser.error(f"{path} is not valid JSON ({error}); repair it, or pass another name")
    if not isinstance(config, dict) or not isinstance(config.get("train_flags"), list):
        parser.error(f"{path} holds no list of training flags; repair it, or pass another name")
    return config


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot(results: Path, out: Path, names: list[str]) -> None:
    """Greedy success against episodes and against training hours, one colour per configuration."""
    figure = Figure(figsize=(12, 4.5))  # no pyplot: files only, no display needed
    axes = figure.subplots(1, 2, sharey=True)
    random_rates: dict[str, list[float]] = {"test": [], "train": []}
    scripted_rates: dict[str, list[float]] = {"test": [], "train": []}  # benchmarks/scripted_reference.py
    tab20 = matplotlib.colormaps["tab20"].colors  # type: ignore[attr-defined]  # a ListedColormap
    colours = tab20[0::2] + tab20[1::2]  # 10 strong colours, then their light shades: 20 before one repeats
    for index, name in enumerate(names):
        rows = read_rows(results / name / "learning.csv")
        for r in rows:
            if r["policy"] in ("random", "scripted"):
                (random_rates if r["policy"] == "random" else scripted_rates)[r["objects"]].append(float(r["rate"]))
        for objects, style in (("test", "-o"), ("train", ":s")):
            points = [r for r in rows if r["policy"] == "greedy" and r["objects"] == objects]
            if not points:
                continue
            rate = [100 * float(r["rate"]) for r in points]
            error = [
                [100 * (float(r["rate"]) - float(r["ci_low"])) for r in points],
                [100 * (float(r["ci_high"]) - float(r["rate"])) for r in points],
            ]
            for axis, x in (
                (axes[0], [int(r["episode"]) for r in points]),
                (axes[1], [float(r["train_seconds"]) / 3600 for r in points]),
            ):
                axis.errorbar(
                    x,
                    rate,
                    yerr=error,
                    fmt=style,
                    color=colours[index % len(colours)],
                    capsize=3,
                    markersize=4,
                    label=f"{name}, {objects} objects",
                )
    for axis, label in zip(axes, ("training episodes", "training hours (wall clock)")):
        for objects, style in (("test", "--"), ("train", ":")):
            if random_rates[objects]:
                rates = random_rates[objects]
                axis.axhline(
                    100 * sum(rates) / len(rates),
                    color="grey",
                    linestyle=style,
                    label=f"random policy, {objects} objects",
                )
            if scripted_rates[objects]:
                rates = scripted_rates[objects]
                axis.axhline(
                    100 * sum(rates) / len(rates),
                    color="black",
                    linestyle=style,
                    label=f"scripted reference (simulator positions), {objects} objects",
                )
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("greedy success rate, % (95% CI)")
    axes[0].set_ylim(0, 100)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = 3  # the longest labels (a run's name and its objects) fit three to a row
    legend_rows = -(-len(labels) // columns)
    height = 4.5 + 0.2 * legend_rows
    figure.set_figheight(height)
    figure.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8)  # below the axes, hiding no point
    figure.suptitle("KUKA grasping: greedy success during training")
    figure.tight_layout(rect=(0, (0.2 * legend_rows + 0.1) / height, 1, 1))
    figure.savefig(out, dpi=120)


def parse_args() -> argparse.Namespace:
    """This script's flags, completed from (and written back to) the configuration's config.json; the training
    flags in `train_flags`, its folder in `folder`, and in `trained_elsewhere` whether its CSV is measured past the
    state saved here (a fresh clone, to --episodes: a run that would go further is refused)."""
    argv = sys.argv[1:]
    train_flags = argv[argv.index("--") + 1 :] if "--" in argv else None
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the configuration's folder under --results")
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="where the configurations' folders and the combined plot go",
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        help=f"training episodes in all (default: the configuration's last, or {RUN_SETTINGS['episodes']})",
    )
    parser.add_argument(
        "--eval-every",
        type=positive_int,
        help=f"evaluate every this many episodes (default: the configuration's last, or {RUN_SETTINGS['eval_every']})",
    )
    parser.add_argument(
        "--eval-episodes",
        type=positive_int,
        help=f"episodes per object set (default: the configuration's, or {RUN_SETTINGS['eval_episodes']})",
    )
    parser.add_argument(
        "--eval-seed",
        type=int,
        help=f"seed of the evaluation scenes (default: the configuration's, or {RUN_SETTINGS['eval_seed']})",
    )
    parser.add_argument(
        "--eval-envs",
        type=positive_int,
        help="evaluation workers, which also choose the scenes (default: the configuration's, or the number of cores)",
    )
    parser.add_argument(
        "--objects",
        choices=("both", "test"),
        help="object sets each evaluation plays: test and "
        "training objects, or the test objects alone to save time (default: the configuration's, or "
        f"{RUN_SETTINGS['objects']})",
    )
    parser.add_argument("--eval-device", choices=("auto", "cpu", "cuda"), default="auto", help="evaluation device")
    parser.add_argument("--minutes", type=float, default=9.0, help="stop after this long; call again to go on")
    parser.add_argument(
        "--plot-with",
        nargs="+",
        default=[],
        metavar="OTHER",
        help="also draw NAME/comparison.png: this configuration beside these others (for example "
        "scripted-reference, which benchmarks/scripted_reference.py writes)",
    )
    args = parser.parse_args(own)
    if not re.fullmatch(r"[\w.-]+", args.name):
        parser.error(f"argument name: letters, digits, '.', '-' and '_' only, got {args.name!r}")

    for other in args.plot_with:
        if not (args.results / other / "learning.csv").exists():
            parser.error(f"argument --plot-with: {args.results / other / 'learning.csv'} does not exist")
    folder = args.results / args.name
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.json"
    config = read_config(config_path, parser) if config_path.exists() else {"train_flags": train_flags or []}
    if train_flags is not None and train_flags != config["train_flags"]:
        parser.error(
            f"{config_path} holds training flags {config['train_flags']}; pass the same, none, or another name"
        )
    train_flags = config["train_flags"]
    for key, default in RUN_SETTINGS.items():
        given = getattr(args, key)
        if key in SCENE_SETTINGS and given is not None and config.get(key, given) != given:
            parser.error(
                f"{config_path} holds --{key.replace('_', '-')} {config[key]}, which chooses the evaluation "
                "scenes; pass the same, none, or another name"
            )
        setattr(args, key, config.get(key, default) if given is None else given)
    evaluated, trained = last_evaluation(folder), saved_state(folder)[0]
    if trained < evaluated < args.episodes:  # a fresh clone: the CSV travels, the state (*.pt) not
        parser.error(
            f"{folder / 'learning.csv'} holds evaluations to episode {evaluated}, but the state to go on from "
            f"({resume_path(folder / 'policy_dqn.pt').name}) is not here; pass another name to train anew"
        )
    settings = {key: getattr(args, key) for key in RUN_SETTINGS}
    machine = config.get("machine") or machine_name(args.eval_device)  # where the configuration's first call ran
    with atomic_write(config_path) as file:  # rewritten by every call: never left half-written
        file.write((json.dumps({"train_flags": train_flags, **settings, "machine": machine}, indent=1) + "\n").encode())
    args.train_flags, args.folder = train_flags, folder
    args.trained_elsewhere = trained < evaluated  # to --episodes (refused above otherwise): nothing left to do here
    return args


def evaluate_due(args: argparse.Namespace, done: set, deadline: float) -> None:
    """The evaluations owed to the saved state: the random policy's once, the current policy's at every
    --eval-every episodes and at the end; each appended to learning.csv as it is measured."""
    csv_path = args.folder / "learning.csv"
    object_sets = ("test", "train") if args.objects == "both" else ("test",)
    for objects in object_sets:
        if ("random", objects, 0) not in done:
            append_row(csv_path, measure(None, objects, args, deadline))
            done.add(("random", objects, 0))
    episode, seconds = saved_state(args.folder)
    if episode > 0 and (episode % args.eval_every == 0 or episode >= args.episodes):
        for objects in object_sets:
            if ("greedy", objects, episode) not in done:
                row = measure(snapshot(args.folder, episode), objects, args, deadline, episode, seconds)
                append_row(csv_path, row)
                done.add(("greedy", objects, episode))
                print(
                    f"{args.name}: episode {episode}, {objects} objects: {row['successes']}/"
                    f"{row['episodes']} ({100 * row['rate']:.0f}%)",
                    flush=True,
                )


def train_to(target: int, args: argparse.Namespace, deadline: float) -> None:
    """Train (or resume) the configuration up to episode `target`; a training stopped by a signal is passed on."""
    folder = args.folder
    command = [
        sys.executable,
        str(ROOT / "bullet_kuka_train.py"),
        "--solve-score",
        "101",
        "--checkpoint",
        str(folder / "policy_dqn.pt"),
        "--logdir",
        str(folder / "logs"),
        *args.train_flags,
        "--episodes",
        str(target),
    ]
    if resume_path(folder / "policy_dqn.pt").exists():
        command.append("--resume")
    returncode = run_training(command, deadline)
    if returncode == 128 + signal.SIGINT:  # the training was stopped on its own, and saved its state
        raise KeyboardInterrupt
    if returncode == 128 + signal.SIGTERM:
        raise Terminated


def run(args: argparse.Namespace, deadline: float) -> None:
    """Evaluate what is owed, train to the next evaluation, and so on, until --episodes or the solve condition."""
    done = {(r["policy"], r["objects"], int(r["episode"])) for r in read_rows(args.folder / "learning.csv")}
    if args.trained_elsewhere:
        print(f"{args.name}: all {args.episodes} episodes were trained and evaluated where its saved state is kept")
        return
    while True:
        evaluate_due(args, done, deadline)
        episode = saved_state(args.folder)[0]
        if episode >= args.episodes:
            print(f"{args.name}: all {args.episodes} episodes trained and evaluated")
            return
        target = min(args.episodes, (episode // args.eval_every + 1) * args.eval_every)
        train_to(target, args, deadline)
        if saved_state(args.folder)[0] < target:
            print(
                f"{args.name}: training ended at episode {saved_state(args.folder)[0]}, before {target}: "
                "its solve condition was met"
            )
            return


def main() -> int:
    args = parse_args()
    deadline = timeit.default_timer() + 60 * args.minutes
    status = 0
    signal.signal(signal.SIGTERM, raise_terminated)  # a kill reaches this process only: stop the training cleanly
    try:
        run(args, deadline)
    except OutOfTime:
        print(f"{args.name}: out of time at episode {saved_state(args.folder)[0]}; call again to go on")
    except KeyboardInterrupt as stopped:
        how = "terminated" if isinstance(stopped, Terminated) else "interrupted"
        print(f"{args.name}: {how} at episode {saved_state(args.folder)[0]}; call again to go on", file=sys.stderr)
        status = exit_status(stopped)
    names = sorted(p.parent.name for p in args.results.glob("*/learning.csv"))
    plot(args.results, args.results / "learning.png", names)
    plot(args.results, args.folder / "learning.png", [args.name])
    if args.plot_with:
        plot(args.results, args.folder / "comparison.png", [args.name, *args.plot_with])
    return status


if __name__ == "__main__":
    sys.exit(main())
