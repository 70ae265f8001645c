"""A second camera straight above the tray, for the view screen: what the tray looks like without the occlusion of
the environment's oblique camera. Imports no torch, so that the environment workers can run it.

The camera looks straight down from OVERHEAD["height"] metres above the map's centre with a narrow field of view,
close to an orthographic view; its depth buffer is unprojected to world points like the environment camera's
(`grasping.camera.unproject`), so the slight perspective does not shift where an object lands in the map. The arm,
whose start pose hangs above the tray, is lifted out of the picture while the camera renders and put back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from grasping.camera import MAP_X, MAP_Y
from grasping.environment import quiet_pybullet

OVERHEAD = dict(height=3.0, near=1.0, far=5.0)
"""The overhead camera's height above z 0 and its near and far planes, in metres."""
CENTRE = ((MAP_X[0] + MAP_X[1]) / 2, (MAP_Y[0] + MAP_Y[1]) / 2)
FOV = 2 * math.degrees(math.atan((MAP_Y[1] - MAP_Y[0]) / 2 / (OVERHEAD["height"] + 0.2)))
"""Wide enough to see the map's full width at the tray's floor (z about -0.18), with a little to spare."""


def view_and_projection() -> tuple[Any, Any]:
    """The overhead camera's view and projection matrices as pybullet takes them (16 floats each, column-major)."""
    pybullet = quiet_pybullet()
    view = pybullet.computeViewMatrix((*CENTRE, OVERHEAD["height"]), (*CENTRE, 0.0), (-1.0, 0.0, 0.0))
    return view, pybullet.computeProjectionMatrixFOV(FOV, 1.0, OVERHEAD["near"], OVERHEAD["far"])


def overhead_matrix() -> np.ndarray:
    """The overhead camera's projection times view (4x4, row-major), as `grasping.camera.camera_matrix` gives the
    environment camera's."""
    view, projection = view_and_projection()
    return np.array(projection).reshape(4, 4).T @ np.array(view).reshape(4, 4).T


def overhead_with_depth(env: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The overhead camera at `size` x `size` in a worker's environment, the arm out of view: RGB uint8 (size, size,
    3) and the depth buffer float32 (size, size), as `grasping.environment.camera_with_depth` returns them."""
    pybullet = quiet_pybullet()
    arm = env._kuka.kukaUid
    position, orientation = pybullet.getBasePositionAndOrientation(arm, physicsClientId=env.cid)
    pybullet.resetBasePositionAndOrientation(
        arm, (position[0], position[1], position[2] + 100.0), orientation, physicsClientId=env.cid
    )
    try:
        view, projection = view_and_projection()
        _, _, image, depth, _ = pybullet.getCameraImage(
            size, size, viewMatrix=view, projectionMatrix=projection, physicsClientId=env.cid
        )
    finally:
        pybullet.resetBasePositionAndOrientation(arm, position, orientation, physicsClientId=env.cid)
    rgb = np.reshape(np.asarray(image, dtype=np.uint8), (size, size, 4))[:, :, :3].copy()
    return rgb, np.reshape(np.asarray(depth, dtype=np.float32), (size, size))
