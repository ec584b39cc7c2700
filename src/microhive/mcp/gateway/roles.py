"""Who is calling the gateway, and which tools that caller may see and call.

A caller presents ``Authorization: Bearer TOKEN``. Each agent role of the mesh
file may name the environment variable holding its token
(``roles.NAME.token_env``); the token maps to the role, and the role's ``tools``
globs (over qualified names ``namespace.tool``, ``fnmatch`` syntax: ``web.*``,
``calculator.add``, ``*``) decide what it sees in ``tools/list`` and may call.

* The mesh's service token (``security.token_env``) is the operator's: it sees
  every tool and may use the admin API. Without a mesh token the admin API is
  open (as every service's API is when the mesh turns auth off; bind to loopback).
* When no role token and no service token is configured at all, the gateway is in
  *open* mode (a single-user development mesh on loopback): every caller sees
  every tool. As soon as one token exists, an unknown or missing token is 401.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from microhive.config.model import MeshConfig

__all__ = ["Caller", "RoleAuth"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a role name (None in open mode) and its tool globs."""

    role: str | None
    globs: tuple[str, ...]
    admin: bool = False

    def allows(self, qualified: str) -> bool:
        return any(fnmatchcase(qualified, glob) for glob in self.globs)


class RoleAuth:
    """Maps bearer tokens to callers."""

    def __init__(
        self,
        roles: Mapping[str, tuple[str | None, tuple[str, ...]]],
        admin_token: str | None = None,
    ) -> None:
        self._tokens: list[tuple[bytes, Caller]] = []
        for role, (token, globs) in roles.items():
            if token:
                self._tokens.append((token.encode(), Caller(role, globs)))
        self._admin = admin_token.encode() if admin_token else None

    @classmethod
    def from_mesh(cls, mesh: MeshConfig, env: Mapping[str, str]) -> RoleAuth:
        roles: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        for name, role in mesh.roles.items():
            token = env.get(role.token_env) if role.token_env else None
            if role.token_env and not token:
                log.warning("role %s: environment variable %s is not set", name, role.token_env)
            roles[name] = (token, tuple(role.tools))
        admin = env.get(mesh.security.token_env) if mesh.security.token_env else None
        return cls(roles, admin)

    @property
    def open(self) -> bool:
        return not self._tokens and self._admin is None

    def resolve(self, authorization: str | None) -> Caller | None:
        """The caller for an ``Authorization`` header value, or None (-> 401)."""
        if self.open:
            return Caller(None, ("*",), admin=True)
        token = _bearer(authorization)
        if token is None:
            return None
        found: Caller | None = None
        for known, caller in self._tokens:
            if hmac.compare_digest(known, token):
                found = caller
        if self._admin is not None and hmac.compare_digest(self._admin, token):
            found = Caller("admin", ("*",), admin=True)
        return found

    def is_admin(self, authorization: str | None) -> bool:
        if self._admin is None:
            return True  # no mesh token: service-to-service auth is off, like every service
        token = _bearer(authorization)
        return token is not None and hmac.compare_digest(self._admin, token)


def _bearer(authorization: str | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode()
