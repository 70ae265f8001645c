"""An environment worker's resident memory over many resets: does pybullet grow at each one (bullet3 issue 2277)?

    python benchmarks/worker_memory.py                          # 2,000 resets of one worker, as training runs it
    python benchmarks/worker_memory.py --file-caching           # the same with pybullet's file cache, as shipped
    python benchmarks/worker_memory.py --resets 200 --every 50 --objects test

One `ProcessEnvPool` worker (the local backend's, without torch) resets its environment `--resets` times,
on the 900 training objects unless `--objects test` (100 objects) is given; its resident memory is read
from /proc (Linux) after the first reset and after every `--every`-th. The environment keeps no file cache
(`grasping.environment`); `--file-caching` turns pybullet's default back on, to see what it costs. Writes
each row (reset, resident_mb, seconds) to --output as it is measured, so that a stopped run keeps its
rows, and prints it. Imports no torch, so that the worker started here does not either.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grasping.cli import OneLineArgumentParser, positive_int
from grasping.environment import quiet_pybullet
from grasping.process_pool import ProcessEnvPool

RESULTS = Path(__file__).resolve().parent / "results" / "worker-memory"


def resident_memory(pid: int) -> tuple[float, bool]:
    """A process's resident memory in MB and whether it has torch's library loaded, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    resident_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return resident_kb / 1024, "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def cache_files(env: Any) -> None:
    """Run in the worker: turn pybullet's file cache back on for its environment."""
    quiet_pybullet().setPhysicsEngineParameter(enableFileCaching=1, physicsClientId=env.cid)


def measure(
    resets: int, every: int, is_test: bool = False, file_caching: bool = False
) -> Iterator[tuple[int, float, float]]:
    """(resets done, the worker's resident MB, seconds since the first reset) after the first reset, every
    `every`-th and the last, as they are measured."""
    with ProcessEnvPool(1, 1, is_test) as pool:
        (pid,) = pool.pids()
        if file_caching:
            from benchmarks.worker_memory import cache_files as by_name  # run as a script, this module is __main__

            pool.call(0, by_name)
        start = timeit.default_timer()
        for done in range(1, resets + 1):
            pool.reset(0)
            pool.results()
            if done == 1 or done % every == 0 or done == resets:
                resident_mb, torch_loaded = resident_memory(pid)
                assert not torch_loaded, "the worker imported torch: the figure would not be a worker's"
                yield done, round(resident_mb, 1), round(timeit.default_timer() - start, 1)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--resets", type=positive_int, default=2000, help="resets of the worker's environment")
    parser.add_argument("--every", type=positive_int, default=100, help="read the memory after every EVERY-th reset")
    parser.add_argument("--objects", choices=("train", "test"), default="train", help="the object set to draw from")
    parser.add_argument("--file-caching", action="store_true", help="with pybullet's file cache, its default")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the CSV file to write (default: benchmarks/results/worker-memory/memory.csv, or file-caching.csv)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    args = parser.parse_args(argv)
    output = args.output or RESULTS / ("file-caching.csv" if args.file_caching else "memory.csv")
    if output.exists() and not args.overwrite:
        parser.error(f"--output {output}: the file exists; pass --overwrite to replace it, or another name")
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = measure(args.resets, args.every, args.objects == "test", args.file_caching)
    with output.open("w", newline="") as file:
        writer = csv.writer(file)
        for row in itertools.chain([("reset", "resident_mb", "seconds")], rows):  # each row as it comes
            writer.writerow(row)
            file.flush()
            print(*row, sep=",", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
