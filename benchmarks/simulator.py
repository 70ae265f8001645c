"""The simulator's truth, for the references and probes that may cheat: where the gripper and the objects are.

The agents see nothing but the camera. Run in an environment worker with `EnvPool.call(index,
gripper_and_objects)`; this module is importable by name there, as such a function must be.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def gripper_and_objects(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """The gripper's (x, y) and each object's, in metres in the tray's plane."""
    import pybullet

    gripper = pybullet.getLinkState(env._kuka.kukaUid, env._kuka.kukaEndEffectorIndex)[0][:2]
    objects = [pybullet.getBasePositionAndOrientation(uid)[0][:2] for uid in env._objectUids]
    return np.array(gripper), np.array(objects)
