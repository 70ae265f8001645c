"""The overhead camera (`--overhead`) on the real environment: a box of known size shows at its pixel and height,
and the arm, lifted out of the camera's view while it renders, is put back. In a module of its own, since an
environment drives pybullet's default client and the camera tests' module keeps one open."""

from __future__ import annotations

import numpy as np
from conftest import BOX_CENTRE, BOX_HALF, add_box, clear_tray

from grasping.camera import camera_matrix, heights, map_cell, topdown_map
from grasping.environment import camera_with_depth, make_env, quiet_pybullet
from grasping.pose_agent import pixel_of


def test_the_overhead_camera_shows_a_box_at_its_pixel_and_height_without_the_arm_and_puts_the_arm_back():
    pybullet = quiet_pybullet()
    env = make_env(is_test=True, camera_size=96, height=True, overhead=True)
    try:
        env.reset()
        clear_tray(env)
        floor_z = -0.184
        add_box(BOX_CENTRE, BOX_HALF, floor_z)
        arm = env._kuka.kukaUid
        before = pybullet.getBasePositionAndOrientation(arm)
        observation = env._get_observation()
        assert pybullet.getBasePositionAndOrientation(arm) == before, "the arm is back where it was"
        top_map = topdown_map(*camera_with_depth(env, 192, overhead=True), matrix=camera_matrix(overhead=True))
    finally:
        env.close()
    top = floor_z + 2 * BOX_HALF[2]
    assert observation.shape == (96, 96, 4)
    column, row = np.floor(pixel_of(np.array([[*BOX_CENTRE, top]]), 96, overhead=True)[0]).astype(int)
    around = observation[row - 1 : row + 2, column - 1 : column + 2]
    assert np.all(np.abs(around[..., 3].astype(int) - int(heights(np.array(top)))) <= 2), "the box's top, within 2 mm"
    assert np.all(around[..., 0] > 150), "and it is the red box"
    # Straight from above, the box's sides sit where its edges are: 3 cm to either side along y, the floor beyond.
    edge, beyond = (
        pixel_of(np.array([[BOX_CENTRE[0], BOX_CENTRE[1] + d, floor_z]]), 96, True)[0] for d in (0.025, 0.04)
    )
    assert abs(int(observation[row, int(edge[0]), 3]) - int(heights(np.array(top)))) <= 2
    assert abs(int(observation[row, int(beyond[0]), 3]) - int(heights(np.array(floor_z)))) <= 3
    # The start pose's arm hangs over the tray; with it out of view nothing over the reachable region (x 0.50-0.65,
    # y -0.17-0.22) reads above the box.
    corners = pixel_of(np.array([[0.50, -0.17, floor_z], [0.65, 0.22, floor_z]]), 96, overhead=True).astype(int)
    (left, top_row), (right, bottom_row) = corners.min(axis=0), corners.max(axis=0)
    assert bottom_row - top_row > 20 and right - left > 60, "the region spans 15 cm by 39 cm at about 6 mm a pixel"
    reachable = observation[top_row : bottom_row + 1, left : right + 1, 3]
    assert reachable.max() <= heights(np.array(top)) + 2, "nothing of the arm shows"
    # Its map, as the view screen bins it: the box at its cell and height, the floor beside it.
    row, col = np.floor(map_cell(np.array(BOX_CENTRE))).astype(int)
    assert np.all(np.abs(top_map[3, row - 3 : row + 4, col - 5 : col + 6].astype(int) - heights(np.array(top))) <= 2)
    beside = top_map[3, row - 3 : row + 4, col + 12 : col + 15].astype(int)  # 4.8 cm beside the box: the floor
    assert np.all(np.abs(beside - int(heights(np.array(floor_z)))) <= 3)
