"""The benchmarks end to end on tiny budgets: the learning benchmark in pieces, as a long run would go, the
scripted reference and the throughput table."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error
from PIL import Image

from benchmarks import scripted_reference, tables
from common import DQN
from grasping.checkpoints import CHECKPOINT_KEYS, load_checkpoint, resume_path

TINY = ("--eval-every", "1", "--eval-episodes", "2", "--eval-envs", "1", "--eval-device", "cpu")
TRAIN = ("--", "--max-steps", "3", "--batch-size", "4", "--device", "cpu")


def learning(results: Path, *args: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "tiny", "--results", str(results), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


@pytest.mark.slow
def test_learning_benchmark_resumes_and_writes_csv_and_plots(tmp_path):
    first = learning(tmp_path, "--episodes", "2", "--minutes", "0.3", *TINY, *TRAIN)
    assert first.returncode == 0, first.stderr
    second = learning(tmp_path, "--episodes", "3")  # no other flags: the stored ones are used
    assert second.returncode == 0, second.stderr
    assert "all 3 episodes trained and evaluated" in second.stdout
    third = learning(tmp_path)  # the total too
    assert third.returncode == 0 and "all 3 episodes trained and evaluated" in third.stdout, third.stderr

    folder = tmp_path / "tiny"
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("machine").startswith(f"{os.cpu_count()} cores ("), "where it was measured"
    assert config == {
        "train_flags": list(TRAIN[1:]),
        "episodes": 3,
        "eval_every": 1,
        "eval_episodes": 2,
        "eval_seed": 1000,
        "eval_envs": 1,
        "objects": "both",
    }
    with open(folder / "learning.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    measured = sorted((r["policy"], r["objects"], int(r["episode"])) for r in rows)
    expected = sorted(
        [("random", o, 0) for o in ("test", "train")] + [("greedy", o, e) for o in ("test", "train") for e in (1, 2, 3)]
    )
    assert measured == expected, "every evaluation once, whichever piece it fell in"
    for row in rows:
        assert row["episodes"] == "2" and 0 <= int(row["successes"]) <= 2
        assert float(row["ci_low"]) <= float(row["rate"]) <= float(row["ci_high"])
    greedy = [r for r in rows if r["policy"] == "greedy"]
    assert all(float(r["train_seconds"]) > 0 for r in greedy)
    policies = sorted(p.name for p in (folder / "policies").iterdir())
    assert policies == ["episode-1.pt", "episode-2.pt", "episode-3.pt"], "the policy of every evaluation is kept"
    last = load_checkpoint(folder / "policies" / "episode-3.pt", torch.device("cpu"), CHECKPOINT_KEYS)
    final = load_checkpoint(resume_path(folder / "policy_dqn.pt"), torch.device("cpu"), CHECKPOINT_KEYS)
    net = DQN(40, 40, 7)
    net.load_state_dict(last["policy_net_state_dict"], strict=True)
    for name, tensor in final["policy_net_state_dict"].items():
        assert torch.equal(net.state_dict()[name], tensor), "episode 3's snapshot is the policy it ended with"
    for png in (folder / "learning.png", tmp_path / "learning.png"):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 500

    missing = learning(tmp_path, "--plot-with", "nothing")
    assert missing.returncode == 2 and "nothing/learning.csv does not exist" in missing.stderr
    compared = learning(tmp_path, "--plot-with", "tiny")
    assert compared.returncode == 0 and (folder / "comparison.png").exists(), compared.stderr
    state = resume_path(folder / "policy_dqn.pt")
    state.rename(tmp_path / "elsewhere.pt")  # as on a fresh clone: the CSV came, the state did not
    csv_text = (folder / "learning.csv").read_text()
    replotted = learning(tmp_path, "--plot-with", "tiny")
    assert replotted.returncode == 0, replotted.stderr
    assert "all 3 episodes were trained and evaluated where its saved state is kept" in replotted.stdout
    assert not state.exists() and (folder / "learning.csv").read_text() == csv_text, "nothing trained again"
    further = learning(tmp_path, "--episodes", "4")
    assert further.returncode == 2 and further.stderr.strip().splitlines()[-1].endswith(
        "learning.csv holds evaluations to episode 3, but the state to go on from (policy_dqn.resume.pt) is not "
        "here; pass another name to train anew"
    )
    assert json.loads((folder / "config.json").read_text())["episodes"] == 3, "a refused call changes nothing"
    (tmp_path / "elsewhere.pt").rename(state)
    other = learning(tmp_path, "--episodes", "3", *TINY, "--", "--double-dqn")
    assert other.returncode != 0 and "holds training flags" in other.stderr
    scenes = learning(tmp_path, "--eval-envs", "2")
    assert scenes.returncode == 2 and scenes.stderr.strip().splitlines()[-1].endswith(
        "holds --eval-envs 1, which chooses the evaluation scenes; pass the same, none, or another name"
    )
    for text, problem in (
        ('{"train_flags": ["--max-steps"', "is not valid JSON"),
        ('{"train_flags": "--double-dqn"}', "holds no list of training flags"),
    ):
        (folder / "config.json").write_text(text)
        refused = learning(tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert f"config.json {problem}" in refused.stderr.strip().splitlines()[-1]
        assert (folder / "config.json").read_text() == text, "the user's file is left as it was"


@pytest.mark.slow
def test_a_piece_that_runs_out_of_time_stops_its_training_with_ctrl_c(tmp_path):
    # Started as nohup or a background job starts it, with SIGINT ignored: the Ctrl-C must still
    # reach the training, which saves its state, well before the 120 s the piece would wait otherwise.
    result = learning(
        tmp_path,
        "--episodes",
        "1000",
        "--minutes",
        "0.5",
        "--eval-episodes",
        "1",
        "--eval-envs",
        "1",
        "--eval-device",
        "cpu",
        *TRAIN,
        timeout=90,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert result.returncode == 0, result.stderr
    assert "out of time at episode" in result.stdout and "call again to go on" in result.stdout
    state = load_checkpoint(resume_path(tmp_path / "tiny" / "policy_dqn.pt"), torch.device("cpu"), ("episode",))
    assert 0 < state["episode"] < 1000, "training ran, was stopped, and saved where it was"


@pytest.mark.slow
def test_a_kill_stops_the_benchmark_and_its_training_which_saves_its_state(tmp_path):
    # The training runs in a session of its own, so a SIGTERM sent to the benchmark alone (`kill`, a batch
    # scheduler) must be passed on, or the training would go on without it.
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "learning.py"),
            "tiny",
            "--results",
            str(tmp_path),
            "--episodes",
            "1000",
            "--minutes",
            "5",
            "--eval-episodes",
            "1",
            "--eval-envs",
            "1",
            "--eval-device",
            "cpu",
            *TRAIN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "tiny" / "logs").glob("events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # a few episodes in
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=150)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated at episode" in stderr.strip().splitlines()[-1] and "call again to go on" in stderr
    assert resume_path(tmp_path / "tiny" / "policy_dqn.pt").exists(), "the training saved its state"
    assert not processes_naming(tmp_path), "no training process left behind"


def processes_naming(folder: Path) -> list[str]:
    """The ids of the processes whose command line names `folder` (Linux; none elsewhere)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder).encode() in path.read_bytes():
                found.append(path.parent.name)
        except OSError:  # it ended while we looked
            pass
    return found


@pytest.mark.slow
def test_scripted_reference_heads_for_the_nearest_object_and_writes_its_row(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scripted_reference.py"),
            "--episodes",
            "2",
            "--num-envs",
            "1",
            "--seed",
            "3",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with open(tmp_path / "learning.csv", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert (row["policy"], row["objects"], row["episodes"]) == ("scripted", "test", "2")
    assert f"Success rate: {row['successes']}/2 = " in result.stdout

    from grasping.kinematics import X_LIMITS, Y_LIMITS
    from grasping.pose_agent import PoseLattice

    def positions(index: int) -> tuple[np.ndarray, np.ndarray]:  # one scene: an object out of reach, one within it
        return np.array([0.537, 0.0]), np.array([[0.40, 0.30], [0.60, -0.10]])

    lattice = PoseLattice()
    policy = scripted_reference.NearestObject(positions, lattice)
    target = lattice.poses[policy.target(0)]
    assert target[2] == 0 and abs(target[0] - 600) <= 40 and abs(target[1] + 100) <= 40, target
    actions = [policy(np.zeros((1, 5, 40, 40)), [0], [t])[0] for t in range(9)]
    assert policy.poses[0] == target and actions[-2:] == [0, 0], "it reaches the pose, then stays"
    assert X_LIMITS[0] <= target[0] <= X_LIMITS[1] and Y_LIMITS[0] <= target[1] <= Y_LIMITS[1]


@pytest.mark.slow
def test_throughput_reports_a_row_per_worker_count_and_a_workers_memory(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "throughput.py"),
            "--max-envs",
            "2",
            "--episodes-per-env",
            "1",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all(float(row.split("|")[2]) > 0 for row in rows)
    [memory] = [line for line in result.stdout.splitlines() if line.startswith("Environment worker (local): ")]
    assert 50 < float(memory.split()[3]) < 4000, memory
    assert memory.endswith("torch loaded in it: no"), "a worker imports pybullet and the environment only"


def test_the_docs_tables_are_what_the_results_say():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tables.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Out of date: none"


def test_a_table_follows_its_csv(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*.png", "*.npz"))
    csv_path = results / "lecture" / "learning.csv"
    rows = csv_path.read_text().splitlines()
    last = rows[-2].split(",")  # the last test-object evaluation (its training-object row follows)
    assert last[2:4] == ["greedy", "test"]
    last[4] = "77"
    csv_path.write_text("\n".join([*rows[:-2], ",".join(last), rows[-1]]) + "\n")
    text = "<!-- table: summary -->\nanything\n<!-- end table -->\nprose\n"
    drawn = tables.render(text, results)
    assert "| 2,500 | 77/100 = 77.0% (67.8-84.2%) | 51/100 = 51.0% (41.3-60.6%) |" in drawn
    assert drawn.endswith("<!-- end table -->\nprose\n") and "anything" not in drawn


def test_the_seeds_table_keeps_to_the_budget_and_a_longer_run_gets_its_own_rows(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*.png", "*.npz", "*.pt"))
    name = tables.POSE_BEST_SEEDS[1]
    before = tables.seeds_table(results, tables.POSE_BEST_SEEDS)
    csv_path = results / name / "learning.csv"
    rows = [row for row in csv_path.read_text().splitlines() if ",greedy,test," in row]
    later = rows[-1].split(",")
    assert int(later[0]) <= tables.BUDGET
    later[0], later[1], later[4], later[6:] = str(tables.BUDGET + 500), "9000.0", "200", ["1.0", "0.98", "1.0"]
    with open(csv_path, "a") as handle:
        handle.write(",".join(later) + "\n")
    assert tables.seeds_table(results, tables.POSE_BEST_SEEDS) == before, "an evaluation past the budget is left out"
    beyond = tables.beyond_budget_table(results, tables.POSE_BEST_SEEDS)
    assert f"| `{name}` | {tables.BUDGET + 500:,} | 200/200 = 100.0% (98.1-100.0%) | 150.0 min |" in beyond
    assert f"| `{name}` | {tables.BUDGET:,} |" in beyond


def test_the_curves_table_lines_runs_up_by_episode_and_marks_the_evaluations_a_run_lacks(tmp_path):
    results = tmp_path / "results"
    for name, evaluated in (("a", (500, 1000)), ("b", (1000, 1500))):
        (results / name).mkdir(parents=True)
        rows = ["episode,train_seconds,policy,objects,successes,episodes,rate,ci_low,ci_high"]
        rows.append("0,0.0,random,test,94,200,0.47,0.402,0.5391")
        rows += [f"{e},{e * 1.2},greedy,test,{e // 10},200,0,0,0" for e in evaluated]
        (results / name / "learning.csv").write_text("\n".join(rows) + "\n")
    lines = tables.curves_table(results, ("a", "b")).splitlines()
    assert lines[0] == "| episodes | `a` | `b` |"
    assert lines[2:] == [
        "| 500 | 50/200 = 25.0% (19.5-31.4%), 10.0 min | - |",
        "| 1,000 | 100/200 = 50.0% (43.1-56.9%), 20.0 min | 100/200 = 50.0% (43.1-56.9%), 20.0 min |",
        "| 1,500 | - | 150/200 = 75.0% (68.6-80.5%), 30.0 min |",
    ], "the random policy's row is not an evaluation of the runs"


def test_a_run_still_on_its_way_to_the_budget_has_no_best_yet_and_stays_out_of_the_readme_line(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*.png", "*.npz", "*.pt"))
    name = tables.POSE_BEST_SEEDS[1]
    csv_path = results / name / "learning.csv"
    lines = csv_path.read_text().splitlines()
    kept = [line for line in lines if ",greedy,test," not in line or int(line.split(",")[0]) <= 1000]
    csv_path.write_text("\n".join(kept) + "\n")
    at_1000 = next(line.split(",") for line in kept if line.startswith("1000,") and ",greedy,test," in line)
    row = next(line for line in tables.seeds_table(results, tables.POSE_BEST_SEEDS).splitlines() if name in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "-", "no best before the budget is reached"
    assert cells[3].startswith(f"{at_1000[4]}/200") and cells[3].endswith(", so far")
    full_line = tables.status_lines(ROOT / "benchmarks" / "results")
    line = tables.status_lines(results)
    assert line != full_line and line.count(", ") < full_line.count(", "), "one seed fewer in the README's line"


def test_worker_memory_reads_a_torch_free_workers_memory_after_its_resets(tmp_path):
    output = tmp_path / "memory.csv"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "worker_memory.py"),
            "--resets",
            "3",
            "--every",
            "2",
            "--file-caching",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["reset"]) for row in rows] == [1, 2, 3]
    assert all(50 < float(row["resident_mb"]) < 1000 for row in rows)
    assert float(rows[0]["seconds"]) < float(rows[-1]["seconds"])
    assert result.stdout.splitlines()[0] == "reset,resident_mb,seconds" and result.stderr == ""
    again = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "worker_memory.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(again, "--output", "exists", "--overwrite")
    assert len(output.read_text().splitlines()) == 4, "the measured rows were kept"
