"""A two-node Ray cluster on this machine, and a short training run whose environment actors are placed on both.

    python benchmarks/ray_two_nodes.py                       # 2 nodes of 1 CPU, 2 actors, 6 episodes
    python benchmarks/ray_two_nodes.py --cpus 2 2 --episodes 20 -- --preset pose

Stands in for a real cluster, where `ray start --head` and `ray start --address=...` run on different
machines: here both nodes are started locally (ray.cluster_utils.Cluster), each with its own CPU
count, so an actor needing one CPU fits on a node only while that node has one free. Runs
`bullet_kuka_train.py --backend ray --ray-address` on the cluster with one environment per CPU in all;
its first line says which node each actor went to. Flags after -- go to training.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from grasping.cli import OneLineArgumentParser, positive_int
from grasping.ray_pool import import_ray

ROOT = Path(__file__).resolve().parent.parent
"""The project folder, where the training script is."""


def main() -> int:
    argv = sys.argv[1:]
    train_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpus",
        type=positive_int,
        nargs=2,
        default=[1, 1],
        metavar=("HEAD", "OTHER"),
        help="CPUs of the head node and of the second node",
    )
    parser.add_argument("--episodes", type=positive_int, default=6, help="training episodes")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    import_ray()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus[0]})
    try:
        cluster.add_node(num_cpus=args.cpus[1])
        cluster.wait_for_nodes()
        print(
            f"Cluster at {cluster.address}: head with {args.cpus[0]} CPU(s), second node with {args.cpus[1]}",
            flush=True,
        )
        with tempfile.TemporaryDirectory() as folder:
            command = [
                sys.executable,
                str(ROOT / "bullet_kuka_train.py"),
                "--backend",
                "ray",
                "--ray-address",
                cluster.address,
                "--num-envs",
                str(sum(args.cpus)),
                "--episodes",
                str(args.episodes),
                "--clip-every",
                "0",
                "--device",
                "cpu",
                "--checkpoint",
                str(Path(folder) / "policy_dqn.pt"),
                "--logdir",
                str(Path(folder) / "logs"),
                *train_flags,
            ]
            return subprocess.run(command).returncode
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
