"""Where a project's supervisor keeps its state and logs: ``<project>/.microhive/``.

The project folder is the folder of the mesh file. Everything a running mesh
leaves on disk lives below it, so two projects on one machine never collide::

    .microhive/
      supervisor.pid      pid of the running supervisor (removed when it stops)
      supervisor.lock     held (flock) by the running supervisor for its lifetime
      supervisor.log      the supervisor's own log
      state.json          every replica: pid, port, state, restarts (atomic writes)
      logs/<service>-<replica>.log
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["STATE_DIR", "ProjectPaths"]

STATE_DIR = ".microhive"


@dataclass(frozen=True)
class ProjectPaths:
    """The files of one project's supervisor."""

    project: Path

    @classmethod
    def for_config(cls, config_path: str | Path) -> ProjectPaths:
        return cls(Path(config_path).resolve().parent)

    @property
    def state_dir(self) -> Path:
        return self.project / STATE_DIR

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "supervisor.pid"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "supervisor.lock"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def supervisor_log(self) -> Path:
        return self.state_dir / "supervisor.log"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def log_file(self, service: str, replica: int) -> Path:
        return self.logs_dir / f"{service}-{replica}.log"

    def ensure(self) -> None:
        """Create the state and log folders."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
