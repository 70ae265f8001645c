"""The camera's geometry on the real environment: its depth buffer gives back the world, and the top-down map
shows a box of known size where it stands, at its height."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BOX_CENTRE, BOX_HALF, add_box, clear_tray

from common import seed_everything
from grasping.camera import FLOOR_Z, MAP_SHAPE, camera_matrix, heights, map_cell, topdown_map, unproject
from grasping.environment import camera_with_depth, make_env
from grasping.pose_agent import pixel_of


@pytest.fixture(scope="module")
def scene_with_box():
    """A test scene with the arm's start pose, its objects moved far away, and a static box on the floor; the
    camera's colour and depth buffer at 256x256, the box's top z, the floor's z under it, the floor's points as
    the camera saw them before the box, and the environment's observation with its height channel at 96x96."""
    seed_everything(4)
    env = make_env(is_test=True, max_steps=20, camera_size=96, height=True)
    try:
        env.reset()
        clear_tray(env)
        rgb, depth = camera_with_depth(env, 256)
        floor = unproject(depth)
        cell = np.floor(map_cell(np.array(BOX_CENTRE))).astype(int)
        floor_z = float(topdown_map(rgb, depth)[3, cell[0], cell[1]]) / 1000 + FLOOR_Z
        add_box(BOX_CENTRE, BOX_HALF, floor_z)
        top = floor_z + 2 * BOX_HALF[2]
        rgb, depth = camera_with_depth(env, 256)
        yield rgb, depth, top, floor_z, floor, env._get_observation()
    finally:
        env.close()


def test_the_depth_buffer_unprojects_onto_the_points_the_camera_projects(scene_with_box):
    floor = scene_with_box[4]
    points = floor[::37, ::37].reshape(-1, 3)
    clip = np.concatenate((points, np.ones((len(points), 1))), axis=1) @ camera_matrix().T
    assert np.all(clip[:, 3] > 0), "every unprojected point lies in front of the camera"
    rows, cols = np.meshgrid(np.arange(0, 256, 37), np.arange(0, 256, 37), indexing="ij")
    expected = np.stack((cols.ravel() + 0.5, rows.ravel() + 0.5), axis=1)
    np.testing.assert_allclose(pixel_of(points, 256), expected, atol=1e-3)


def test_the_tray_floor_reads_at_its_height_and_a_box_at_its_top(scene_with_box):
    rgb, depth, top, floor_z, _, _ = scene_with_box
    assert -0.19 < floor_z < -0.178, "the tray's floor is at z -0.184"
    top_map = topdown_map(rgb, depth)
    assert top_map.shape == (4, *MAP_SHAPE) and top_map.dtype == np.uint8
    row, col = np.floor(map_cell(np.array(BOX_CENTRE))).astype(int)
    inner = top_map[:, row - 3 : row + 4, col - 5 : col + 6]  # well inside the box's 10 x 15 cells
    assert np.all(np.abs(inner[3].astype(int) - int(heights(np.array(top)))) <= 2), "the box's top, within 2 mm"
    assert np.all(inner[0] > 150) and np.all(inner[1] < 60), "the box is red"
    beside = top_map[3, row - 12 : row + 13, col + 12 : col + 14]  # 4.8 cm to the side of the box's centre: floor
    assert np.all(np.abs(beside.astype(int) - int(heights(np.array(floor_z)))) <= 3)
    raised = top_map[3] > heights(np.array(floor_z + 0.02))
    low = np.floor(map_cell(np.array([BOX_CENTRE[0] - BOX_HALF[0], BOX_CENTRE[1] - BOX_HALF[1]])))
    high = np.floor(map_cell(np.array([BOX_CENTRE[0] + BOX_HALF[0], BOX_CENTRE[1] + BOX_HALF[1]])))
    cols = col - 15 + np.flatnonzero(raised[row, col - 15 : col + 16])
    rows = row - 15 + np.flatnonzero(raised[row - 15 : row + 16, col])
    # The camera sees the box's sides at y - 3 cm, y + 3 cm and x - 2 cm; the side at x + 2 cm is hidden, and the
    # cells behind it take the box's height from their neighbours.
    assert abs(cols[0] - low[1]) <= 1 and abs(cols[-1] - high[1]) <= 1, "the box's sides along y, within a cell"
    assert abs(rows[0] - low[0]) <= 1 and rows[-1] >= high[0], "the box's near side along x, within a cell"


def test_the_observations_height_channel_reads_the_box_top_where_the_camera_shows_it(scene_with_box):
    _, _, top, floor_z, _, observation = scene_with_box
    assert observation.shape == (96, 96, 4)
    column, row = np.floor(pixel_of(np.array([[*BOX_CENTRE, top]]), 96)[0]).astype(int)
    around = observation[row - 1 : row + 2, column - 1 : column + 2, 3].astype(int)
    assert np.all(np.abs(around - int(heights(np.array(top)))) <= 2), "the box's top, within 2 mm"
    assert np.all(observation[row - 1 : row + 2, column - 1 : column + 2, 0] > 150), "and it is the red box"
