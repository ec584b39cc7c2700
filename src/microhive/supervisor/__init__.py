"""The local supervisor: runs every service of a mesh as its own OS process.

``microhive up`` starts :class:`Supervisor` in the background (``python -m
microhive.supervisor``); :mod:`microhive.supervisor.control` finds, reads and
stops it. State and logs live under ``<project>/.microhive/`` (see
:mod:`microhive.supervisor.paths`). POSIX only: it relies on process groups.
"""

from microhive.supervisor.control import (
    StopReport,
    busy_ports,
    has_exited,
    live_status,
    mesh_pids,
    read_state,
    start_detached,
    stop_mesh,
    supervisor_pid,
)
from microhive.supervisor.core import (
    BLOCKED,
    FAILED,
    PENDING,
    READY,
    RESTARTING,
    STARTING,
    STOPPED,
    STOPPING,
    Replica,
    RestartPolicy,
    Supervisor,
    config_failure,
)
from microhive.supervisor.paths import STATE_DIR, ProjectPaths

__all__ = [
    "BLOCKED",
    "FAILED",
    "PENDING",
    "READY",
    "RESTARTING",
    "STARTING",
    "STATE_DIR",
    "STOPPED",
    "STOPPING",
    "ProjectPaths",
    "Replica",
    "RestartPolicy",
    "StopReport",
    "Supervisor",
    "busy_ports",
    "config_failure",
    "has_exited",
    "live_status",
    "mesh_pids",
    "read_state",
    "start_detached",
    "stop_mesh",
    "supervisor_pid",
]
