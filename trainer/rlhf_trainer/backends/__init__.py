"""Backends run the role classes: `local` in this process, `ray` as Ray actors in placement groups."""

from .base import Backend, RoleGroup
from .local import LocalBackend
from .placement import PlacementPlan, WorkerPlacement, plan_placement

__all__ = ["Backend", "LocalBackend", "PlacementPlan", "RoleGroup", "WorkerPlacement", "plan_placement"]
