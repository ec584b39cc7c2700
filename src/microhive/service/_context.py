"""What a service factory is given: who it is and the mesh it belongs to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from microhive.config import MeshConfig, ServiceSpec
from microhive.errors import ConfigError, ServiceUnavailable, UsageError

__all__ = ["DEFAULT_HOST", "STATE_DIR", "ServiceContext", "mesh_token", "port_file", "service_url"]

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
        return port_file(self.state_dir, self.name, self.replica)


def port_file(state_dir: Path, name: str, replica: int = 0) -> Path:
    """Where the runner writes the port replica ``replica`` of ``name`` listens on."""
    return state_dir / "ports" / f"{name}-{replica}.port"


def service_url(
    mesh: MeshConfig, *, kind: str, name: str | None = None, state_dir: Path | None = None
) -> str:
    """``http://host:port`` of the mesh's service ``name`` (default: the first of ``kind``).

    The port is the one the running replica 0 wrote to its port file under
    ``state_dir`` when there is one, else the mesh file's fixed port. A wildcard
    bind address is reached on loopback.
    """
    names = [n for n, s in mesh.services.items() if s.kind == kind]
    chosen = name or (names[0] if names else None)
    if chosen is None or chosen not in mesh.services:
        raise UsageError(f"the mesh has no {kind} service (add one of kind: {kind})")
    spec = mesh.services[chosen]
    written = port_file(state_dir, chosen) if state_dir is not None else None
    port = int(written.read_text().strip() or 0) if written and written.exists() else spec.port
    if not port:
        where = f" (no port file {written})" if written is not None else ""
        raise ServiceUnavailable(f"service {chosen!r} has no fixed port and is not running{where}")
    host = spec.host or mesh.host or DEFAULT_HOST
    if host in ("0.0.0.0", "::"):
        host = DEFAULT_HOST
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def mesh_token(mesh: MeshConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The service-to-service token a client of the mesh sends (``None``: auth is off)."""
    var = mesh.security.token_env
    return (os.environ if env is None else env).get(var) if var else None


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
