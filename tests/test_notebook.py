"""The lecture's notebook, kuka_rl.ipynb, executed top to bottom in a real kernel on a tiny budget. Needs the
`notebook` extra; skipped without it."""

from __future__ import annotations

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

from conftest import ROOT  # noqa: E402 (after the extra's check)

TINY_BUDGET = "TRAIN_EPISODES = 4\nEVAL_EPISODES = 4\nNUM_ENVS = 2\n"


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_a_tiny_budget() -> None:
    notebook = nbformat.read(ROOT / "kuka_rl.ipynb", as_version=4)
    (parameters,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    parameters.source = TINY_BUDGET
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "Example extracted screen" not in text  # a title, drawn in a figure rather than printed
    assert "shipped policy: " in text and "(95% CI" in text
    assert "4 episodes in" in text
    images = [kind for output in outputs for kind in output.get("data", {}) if kind.startswith("image/")]
    assert images.count("image/png") == 3 and "image/gif" in images
    assert "Traceback" not in text and "Not connected to physics server" not in text
