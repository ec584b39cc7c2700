"""What a service factory is given: who it is and the mesh it belongs to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from microhive.config import MeshConfig, ServiceSpec
from microhive.errors import ConfigError, UsageError

__all__ = ["DEFAULT_HOST", "STATE_DIR", "ServiceContext"]

DEFAULT_HOST = "127.0.0.1"
STATE_DIR = Path(".microhive")


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """One replica of one service of a mesh, as its factory sees it.

    ``port`` is the port asked for; ``None`` or ``0`` means "pick a free one"
    (the runner writes the real one to ``state_dir/ports/<name>-<replica>.port``).
    ``token`` is the service-to-service bearer token, read from the environment
    variable the mesh names in ``security.token_env``; ``None`` turns auth off.
    """

    name: str
    spec: ServiceSpec
    mesh: MeshConfig
    replica: int = 0
    host: str = DEFAULT_HOST
    port: int | None = None
    token: str | None = None
    state_dir: Path = STATE_DIR
    config_path: Path | None = None

    @classmethod
    def from_mesh(
        cls,
        mesh: MeshConfig,
        name: str,
        replica: int = 0,
        port: int | None = None,
        host: str | None = None,
        config_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServiceContext:
        """The context of replica ``replica`` of service ``name``.

        Raises :class:`~microhive.errors.NotFound` for an unknown service,
        :class:`~microhive.errors.UsageError` for a replica the mesh does not
        have, and :class:`~microhive.errors.ConfigError` when the mesh asks for a
        token whose environment variable is not set (auth never silently turns off).
        """
        spec = mesh.service(name)
        if not 0 <= replica < spec.replicas:
            raise UsageError(
                f"service {name!r} has {spec.replicas} replica(s), numbered 0.."
                f"{spec.replicas - 1}; there is no replica {replica}"
            )
        if port is None:
            port = spec.ports()[replica]
        if port is not None and not 0 <= port <= 65535:
            raise UsageError(f"port must be between 0 and 65535, got {port}")
        path = Path(config_path) if config_path is not None else None
        state_dir = path.parent / STATE_DIR if path is not None else STATE_DIR
        return cls(
            name=name,
            spec=spec,
            mesh=mesh,
            replica=replica,
            host=host or spec.host or mesh.host or DEFAULT_HOST,
            port=port,
            token=_token(mesh, path, os.environ if env is None else env),
            state_dir=state_dir,
            config_path=path,
        )

    @property
    def port_file(self) -> Path:
        """Where the runner writes the port this replica actually listens on."""
        return self.state_dir / "ports" / f"{self.name}-{self.replica}.port"


def _token(mesh: MeshConfig, path: Path | None, env: Mapping[str, str]) -> str | None:
    var = mesh.security.token_env
    if var is None:
        return None
    token = env.get(var, "")
    if not token:
        raise ConfigError(
            f"expected the environment variable {var} to hold the service token, "
            "but it is not set (or empty); set it, or remove security.token_env to turn auth off",
            file=str(path) if path is not None else None,
            field="security.token_env",
        )
    return token
