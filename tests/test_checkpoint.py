"""Checkpoints: round trip, the lecture's keys, atomic writes, and every way a file can be wrong."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_script

from common import DQN
from grasping.checkpoints import (
    CHECKPOINT_KEYS,
    LECTURE_CONFIG,
    checkpoint_config,
    load_checkpoint,
    load_state,
    resume_path,
    save_checkpoint,
)
from grasping.cli import CheckpointError

CPU = torch.device("cpu")


def lecture_checkpoint(outputs: int = 7) -> dict:
    policy_net, target_net = DQN(40, 40, outputs), DQN(40, 40, outputs)
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=1e-4)
    return {
        "policy_net_state_dict": policy_net.state_dict(),
        "target_net_state_dict": target_net.state_dict(),
        "optimizer_policy_net_state_dict": optimizer.state_dict(),
    }


class RunsCode:
    """A pickle that would create a file when unpickled, as a malicious checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_keeps_the_lectures_keys_and_weights(tmp_path):
    path = tmp_path / "policy_dqn.pt"
    saved = lecture_checkpoint()
    save_checkpoint(path, saved)
    loaded = load_checkpoint(path, CPU, CHECKPOINT_KEYS)
    assert set(loaded) == set(CHECKPOINT_KEYS)
    net = DQN(40, 40, 7)
    load_state(net, loaded, "policy_net_state_dict", path)
    for key, value in saved["policy_net_state_dict"].items():
        assert torch.equal(net.state_dict()[key], value)
    assert list(tmp_path.iterdir()) == [path], "no temporary file left behind"


def test_resume_path_sits_beside_the_checkpoint():
    assert resume_path(Path("runs/policy_dqn.pt")) == Path("runs/policy_dqn.resume.pt")


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "policy_dqn.pt"
    save_checkpoint(path, lecture_checkpoint())
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be pickled
        save_checkpoint(path, {"policy_net_state_dict": DQN(40, 40, 7).state_dict(), "bad": lambda: None})
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def write_bad_checkpoint(path: Path, case: str, marker: Path) -> None:
    """Leave at `path` a checkpoint that is wrong in the way `case` names ("missing" leaves nothing)."""
    if case == "directory":
        path.mkdir()
    elif case == "corrupt":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "truncated":
        save_checkpoint(path, lecture_checkpoint())
        path.write_bytes(path.read_bytes()[:20000])
    elif case == "code":
        torch.save({"policy_net_state_dict": RunsCode(marker)}, path)
    elif case == "missing key":
        torch.save({"model": DQN(40, 40, 7).state_dict()}, path)
    elif case == "not a dict":
        torch.save(torch.zeros(3), path)
    elif case == "wrong shape":
        save_checkpoint(path, lecture_checkpoint(outputs=9))


@pytest.mark.parametrize("case", ["missing", "directory", "corrupt", "truncated", "code", "missing key", "not a dict"])
def test_load_reports_faults_as_one_error_naming_the_file(tmp_path, case):
    path = tmp_path / "policy_dqn.pt"
    marker = tmp_path / "code_ran"
    write_bad_checkpoint(path, case, marker)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, CPU, ("policy_net_state_dict",))
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)
    assert not marker.exists(), "loading must never run pickled code"


def test_a_config_is_completed_from_the_lectures_and_checked():
    path = Path("policy_dqn.pt")
    assert checkpoint_config({}, path) == LECTURE_CONFIG, "a lecture file records no config"
    assert checkpoint_config({"config": {"timestep_input": True}}, path) == {**LECTURE_CONFIG, "timestep_input": True}
    colour = {"timestep_input": False, "image_size": 96, "rgb": True}
    older = {"network": "lecture", "first_frame_input": False, "pose_input": False}
    assert checkpoint_config({"config": colour}, path) == {**colour, **older}, "written before --network"
    fine = {**colour, "network": "fine", "first_frame_input": True, "pose_input": False}
    assert checkpoint_config({"config": fine}, path) == fine
    for bad in (
        {"image_size": 20},
        {"image_size": 96.0},
        {"rgb": "yes"},
        {"frames": 4},
        "rgb",
        {"network": "wide"},
        {"network": ["fine"]},
        {"pose_input": 1},
    ):
        with pytest.raises(CheckpointError, match="policy_dqn.pt: its 'config' is not a network configuration"):
            checkpoint_config({"config": bad}, path)


def test_a_state_dict_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "policy_dqn.pt"
    write_bad_checkpoint(path, "wrong shape", tmp_path / "code_ran")
    checkpoint = load_checkpoint(path, CPU, CHECKPOINT_KEYS)
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_state(DQN(40, 40, 7), checkpoint, "policy_net_state_dict", path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "corrupt", "code", "missing key", "wrong shape"])
def test_eval_script_refuses_bad_checkpoints_in_one_line(workdir, case):
    path = workdir / "policy_dqn.pt"
    marker = workdir / "code_ran"
    expected = {
        "missing": "no such checkpoint file; train one (python bullet_kuka_train.py --preset pose) or pass "
        "--checkpoint pretrained/pose_agent.pt",
        "corrupt": "corrupt",
        "code": "refused to load",
        "missing key": "missing key 'policy_net_state_dict'",
        "wrong shape": "does not fit",
    }[case]
    write_bad_checkpoint(path, case, marker)
    result = run_script("eval", "--episodes", "1", cwd=workdir)
    assert_one_line_error(result, "policy_dqn.pt", expected)
    assert "Episode:" not in result.stdout
    assert not marker.exists()
