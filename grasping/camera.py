"""The environment's camera as geometry: where a world point appears in its image, and what world point each
pixel of its depth buffer shows. Imports no torch, so that the environment workers can use it.

KukaDiverseObjectEnv renders with one view and projection at every reset (cameraRandom 0). Its depth buffer is
OpenGL's: a value in [0, 1] per pixel, nonlinear between the near and far planes; with the inverse of
projection x view it gives back the world point the pixel shows. The heights of those points, binned from
above, make the top-down map of the tray.

A second camera, which the environment does not have (`--overhead`), looks straight down on the tray from
OVERHEAD["height"] metres with a narrow field of view: close to an orthographic view, with no floor hidden behind
the objects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CAMERA = dict(look=(0.23, 0.2, 0.54), distance=1.0, yaw=245.0, pitch=-56.0, fov=20.0, near=0.01, far=10.0)
"""KukaDiverseObjectEnv's camera (cameraRandom 0): the same view and projection at every reset."""
FLOOR_Z = -0.19
"""Heights are kept as millimetres above this world z, clipped to 0-255 (the tray's floor shows at -0.184;
the arm above 0.065 m reads 255)."""
MAP_X, MAP_Y, MAP_CELL = (0.42, 0.74), (-0.25, 0.31), 0.004
"""The top-down map's extent and cell: the reachable x 0.50-0.65 m and y -0.17-0.22 m with 8 cm around them, in
4 mm cells; rows run along x, columns along y."""
MAP_SHAPE = (round((MAP_X[1] - MAP_X[0]) / MAP_CELL), round((MAP_Y[1] - MAP_Y[0]) / MAP_CELL))
"""(rows, columns) of the top-down map: (80, 140)."""
OVERHEAD = dict(height=3.0, near=1.0, far=5.0)
"""The overhead camera's height above z 0 and its near and far planes, in metres."""
OVERHEAD_CENTRE = ((MAP_X[0] + MAP_X[1]) / 2, (MAP_Y[0] + MAP_Y[1]) / 2)
"""Where the overhead camera looks down, (x, y): the map's centre."""
OVERHEAD_FOV = 2 * math.degrees(math.atan((MAP_Y[1] - MAP_Y[0]) / 2 / (OVERHEAD["height"] + 0.2)))
"""Wide enough to see the map's full width (y) at the tray's floor (z about -0.18), with a little to spare; the
image's rows run along x, its columns along y."""


def view_and_projection(overhead: bool = False) -> tuple[Any, Any]:
    """The environment camera's view and projection matrices, or the overhead camera's, as pybullet takes them (16
    floats each, column-major)."""
    from grasping.environment import quiet_pybullet

    pybullet = quiet_pybullet()
    if overhead:
        view = pybullet.computeViewMatrix((*OVERHEAD_CENTRE, OVERHEAD["height"]), (*OVERHEAD_CENTRE, 0.0), (-1, 0, 0))
        return view, pybullet.computeProjectionMatrixFOV(OVERHEAD_FOV, 1.0, OVERHEAD["near"], OVERHEAD["far"])
    view = pybullet.computeViewMatrixFromYawPitchRoll(
        CAMERA["look"], CAMERA["distance"], CAMERA["yaw"], CAMERA["pitch"], 0, 2
    )
    return view, pybullet.computeProjectionMatrixFOV(CAMERA["fov"], 1.0, CAMERA["near"], CAMERA["far"])


def camera_matrix(overhead: bool = False) -> np.ndarray:
    """The environment camera's projection times view matrix, or the overhead camera's (4x4, row-major): world point
    to clip space."""
    view, projection = view_and_projection(overhead)
    return np.array(projection).reshape(4, 4).T @ np.array(view).reshape(4, 4).T


def unproject(depth_buffer: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """A depth buffer (S, S) of the environment's camera, or of the camera whose projection times view is `matrix`
    (4x4, row-major, as `camera_matrix` gives it) -> the world point each pixel's centre shows (S, S, 3)."""
    size = depth_buffer.shape[0]
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    x_ndc, y_ndc = np.meshgrid(centres, -centres, indexing="xy")
    ndc = np.stack((x_ndc, y_ndc, 2 * depth_buffer.astype(np.float64) - 1, np.ones_like(x_ndc)), axis=-1)
    world = ndc @ np.linalg.inv(camera_matrix() if matrix is None else matrix).T
    return world[..., :3] / world[..., 3:]


def heights(z: np.ndarray) -> np.ndarray:
    """World z in metres -> uint8 millimetres above FLOOR_Z."""
    return np.clip(np.round((z - FLOOR_Z) * 1000), 0, 255).astype(np.uint8)


def _neighbourhood(array: np.ndarray, fill: float) -> np.ndarray:
    """The 3x3 neighbourhood of every cell of (..., R, C), as (9, ..., R, C); beyond the edge, `fill`."""
    padded = np.pad(array, [(0, 0)] * (array.ndim - 2) + [(1, 1), (1, 1)], constant_values=fill)
    rows, cols = array.shape[-2:]
    return np.stack([padded[..., i : i + rows, j : j + cols] for i in range(3) for j in range(3)])


def topdown_map(
    rgb: np.ndarray, depth_buffer: np.ndarray, fill_passes: int = 8, matrix: np.ndarray | None = None
) -> np.ndarray:
    """The camera's colour (S, S, 3) uint8 and depth buffer (S, S) seen from above: uint8 (4, *MAP_SHAPE), the
    colour and the height (`heights`) of the highest point in each cell. The camera is the environment's, or the
    one whose projection times view is `matrix` (`unproject`).

    Cells no pixel lands in (mostly behind objects, as the camera sees them) take, over up to `fill_passes`
    passes, the highest height among their filled neighbours and those neighbours' mean colour; any left
    after that read as the floor.
    """
    points = unproject(depth_buffer, matrix).reshape(-1, 3)
    i = np.floor((points[:, 0] - MAP_X[0]) / MAP_CELL).astype(np.int64)
    j = np.floor((points[:, 1] - MAP_Y[0]) / MAP_CELL).astype(np.int64)
    inside = (i >= 0) & (i < MAP_SHAPE[0]) & (j >= 0) & (j < MAP_SHAPE[1])
    z, colours = points[inside, 2], rgb.reshape(-1, 3)[inside].astype(np.float64)
    cell = i[inside] * MAP_SHAPE[1] + j[inside]
    order = np.lexsort((-z, cell))  # by cell, highest first
    first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]]
    flat_height = np.full(MAP_SHAPE[0] * MAP_SHAPE[1], -np.inf)
    flat_colour = np.zeros((MAP_SHAPE[0] * MAP_SHAPE[1], 3))
    flat_height[cell[first]], flat_colour[cell[first]] = z[first], colours[first]
    height = flat_height.reshape(MAP_SHAPE)
    colour = flat_colour.reshape(*MAP_SHAPE, 3).transpose(2, 0, 1)
    for _ in range(fill_passes):
        empty = np.isinf(height)
        if not empty.any():
            break
        filled = _neighbourhood(~empty, False)
        count = filled.sum(axis=0)
        mean = (_neighbourhood(colour, 0.0) * filled[:, None]).sum(axis=0) / np.maximum(count, 1)
        colour = np.where(empty & (count > 0), mean, colour)
        height = np.where(empty, _neighbourhood(height, -np.inf).max(axis=0), height)
    height = np.where(np.isinf(height), FLOOR_Z, height)
    return np.concatenate((np.clip(np.round(colour), 0, 255).astype(np.uint8), heights(height)[None]))


def map_cell(points: np.ndarray) -> np.ndarray:
    """World (x, y) points (..., 2) -> their (row, column) in the top-down map, fractional, cell k covering
    [k, k + 1)."""
    return np.stack(((points[..., 0] - MAP_X[0]) / MAP_CELL, (points[..., 1] - MAP_Y[0]) / MAP_CELL), axis=-1)
