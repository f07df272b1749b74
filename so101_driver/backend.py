"""The interface every arm backend (MuJoCo simulation, Feetech hardware) implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from hilserl.messages.conventions import JOINT_NAMES


@dataclass(frozen=True)
class JointReading:
    """One read of all six joints, in JOINT_NAMES order (rad, rad/s, N*m or % load)."""
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    stamp_s: float


@dataclass(frozen=True)
class TaskState:
    """Ground truth only a simulator knows."""
    cube_xyz_m: np.ndarray
    cube_quat_wxyz: np.ndarray
    grasped: bool
    lifted: bool
    cube_height_m: float


class ArmBackend(ABC):
    joint_names: Tuple[str, ...] = JOINT_NAMES

    @abstractmethod
    def read(self) -> JointReading:
        """Current joint state; raises BackendError if the arm cannot be read."""

    @abstractmethod
    def write_goal(self, position_rad: np.ndarray) -> None:
        """Joint position goals for all six joints (already limited by the caller)."""

    @abstractmethod
    def set_torque(self, enabled: bool) -> None:
        """Torque on/off. Off drops the arm: callers must log it as a decision."""

    @property
    @abstractmethod
    def torque_enabled(self) -> bool:
        ...

    def task_state(self) -> Optional[TaskState]:
        """Ground-truth task state (simulation only; None on hardware)."""
        return None

    def close(self) -> None:
        """Release the device."""


class BackendError(RuntimeError):
    """The arm could not be read or commanded."""
