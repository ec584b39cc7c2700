"""The registry of tool services: which namespace is served by which MCP endpoint.

Entries come from three places, later ones winning for the same namespace:

1. the mesh file: every service whose kind is a tool kind (:data:`TOOL_KINDS`),
   or that sets ``settings.mcp: true``, under its service name as namespace,
   reached at ``http://HOST:PORT{settings.mcp_path or /mcp}``; ``settings.namespace``
   overrides the namespace and ``settings.gateway: false`` leaves it out;
2. the gateway's own ``settings.upstreams`` list (``{namespace, url, version}``);
3. runtime registrations through the admin API (``register``, ``unregister``,
   ``attach``), persisted in a small JSON file so a restart keeps them.

The same file keeps the **tool fingerprints** that guard against a "rug pull":
the first time a tool is seen its description and input schema are hashed and
remembered; a later listing with a different hash puts the tool on hold until an
operator approves the new definition.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from microhive.config.model import MeshConfig
from microhive.errors import ConfigError, InvalidInput, NotFound, ServiceUnavailable
from microhive.service import service_url

__all__ = [
    "TOOL_KINDS",
    "Registry",
    "RegistryStore",
    "UpstreamSpec",
    "fingerprint",
    "specs_from_mesh",
    "validate_namespace",
]

#: Service kinds that are MCP tool services (registered with the gateway automatically).
TOOL_KINDS = frozenset(
    {"tool", "openapi-tools", "pdf", "web", "sentiment", "notifier", "workspace"}
)

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
Source = Literal["mesh", "settings", "runtime"]


def validate_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise InvalidInput(
            f"namespace {namespace!r} must be 1-48 lowercase letters, digits, '_' or '-', "
            "starting with a letter"
        )
    return namespace


def _validate_url(url: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"upstream url {url!r} must be an http(s) URL with a host")
    return url


@dataclass(frozen=True)
class UpstreamSpec:
    """One tool service as the gateway sees it."""

    namespace: str
    url: str
    version: str = ""
    service: str | None = None
    source: Source = "runtime"

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        _validate_url(self.url)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, source: Source = "runtime") -> UpstreamSpec:
        if not isinstance(raw, dict):
            raise InvalidInput(f"expected an object with namespace and url, got {raw!r}")
        unknown = sorted(set(raw) - {"namespace", "url", "version", "service", "source"})
        if unknown:
            raise InvalidInput(f"unknown upstream field(s) {unknown}")
        for key in ("namespace", "url"):
            if not isinstance(raw.get(key), str):
                raise InvalidInput(f"upstream field {key!r} is required and must be a string")
        version = raw.get("version", "")
        if not isinstance(version, str):
            raise InvalidInput("upstream field 'version' must be a string")
        return cls(
            namespace=raw["namespace"],
            url=raw["url"],
            version=version,
            service=raw.get("service"),
            source=raw.get("source", source),
        )


def specs_from_mesh(
    mesh: MeshConfig, settings: dict[str, Any] | None = None, state_dir: Path | None = None
) -> list[UpstreamSpec]:
    """The upstreams a mesh file declares (tool services and ``settings.upstreams``).

    A tool service without a fixed port is found through the port file its runner
    writes (``state_dir/ports/NAME-0.port``), when it is already running.
    """
    specs: list[UpstreamSpec] = []
    for name, svc in mesh.services.items():
        opts = svc.settings
        is_tool = svc.kind in TOOL_KINDS or opts.get("mcp") is True
        if not is_tool or opts.get("gateway") is False:
            continue
        try:
            base = service_url(mesh, kind=svc.kind, name=name, state_dir=state_dir)
        except ServiceUnavailable:  # no fixed port and not running yet
            continue
        path = str(opts.get("mcp_path", "/mcp"))
        specs.append(
            UpstreamSpec(
                namespace=str(opts.get("namespace", name)),
                url=f"{base}{path}",
                version=str(opts.get("version", "")),
                service=name,
                source="mesh",
            )
        )
    for raw in (settings or {}).get("upstreams", []) or []:
        try:
            specs.append(UpstreamSpec.from_dict(raw, source="settings"))
        except InvalidInput as exc:
            raise ConfigError(f"gateway settings.upstreams: {exc.message}") from None
    return specs


def fingerprint(description: str | None, input_schema: Any) -> str:
    """A stable hash of what a model reads about a tool (its description and schema)."""
    canonical = json.dumps(
        {"description": description or "", "inputSchema": input_schema},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class _State:
    upstreams: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)


class RegistryStore:
    """The registry's JSON file, written atomically (temp file + rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> _State:
        if self.path is None or not self.path.exists():
            return _State()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return _State(
                upstreams=dict(raw.get("upstreams", {})),
                removed=list(raw.get("removed", [])),
                fingerprints=dict(raw.get("fingerprints", {})),
                held=dict(raw.get("held", {})),
            )
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"cannot read the gateway registry {self.path}: {exc}") from exc

    def save(self, state: _State) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(asdict(state), indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".registry-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        os.replace(tmp, self.path)


class Registry:
    """Upstreams by namespace plus the tool fingerprints, persisted on every change."""

    def __init__(self, declared: list[UpstreamSpec], store: RegistryStore | None = None) -> None:
        self._declared = {spec.namespace: spec for spec in declared}
        self._store = store or RegistryStore(None)
        self._state = self._store.load()

    # -- upstreams ---------------------------------------------------------------------
    def upstreams(self) -> dict[str, UpstreamSpec]:
        specs = {ns: s for ns, s in self._declared.items() if ns not in self._state.removed}
        for ns, raw in self._state.upstreams.items():
            specs[ns] = UpstreamSpec.from_dict(raw)
        return dict(sorted(specs.items()))

    def get(self, namespace: str) -> UpstreamSpec:
        spec = self.upstreams().get(namespace)
        if spec is None:
            known = ", ".join(self.upstreams()) or "none"
            raise NotFound(f"no upstream for namespace {namespace!r} (namespaces: {known})")
        return spec

    def register(self, spec: UpstreamSpec) -> UpstreamSpec:
        spec = UpstreamSpec(spec.namespace, spec.url, spec.version, spec.service, "runtime")
        self._state.upstreams[spec.namespace] = spec.to_dict()
        if spec.namespace in self._state.removed:
            self._state.removed.remove(spec.namespace)
        self._store.save(self._state)
        return spec

    def attach(self, namespace: str, url: str, version: str = "") -> UpstreamSpec:
        """Point an existing namespace at a new endpoint (and forget its fingerprints)."""
        old = self.get(namespace)
        spec = self.register(UpstreamSpec(namespace, url, version, old.service))
        self.forget_tools(namespace)
        return spec

    def unregister(self, namespace: str) -> UpstreamSpec:
        spec = self.get(namespace)
        self._state.upstreams.pop(namespace, None)
        if namespace in self._declared and namespace not in self._state.removed:
            self._state.removed.append(namespace)
        self.forget_tools(namespace)
        return spec

    # -- fingerprints (rug-pull guard) --------------------------------------------------
    def check_tool(self, qualified: str, definition: dict[str, Any]) -> bool:
        """Record or compare a tool's fingerprint; False when the tool must be held."""
        fp = fingerprint(definition.get("description"), definition.get("inputSchema"))
        known = self._state.fingerprints.get(qualified)
        if known is None:
            self._state.fingerprints[qualified] = fp
            self._store.save(self._state)
            return True
        if known == fp:
            if self._state.held.pop(qualified, None) is not None:
                self._store.save(self._state)
            return True
        held = self._state.held.get(qualified)
        if held is None or held.get("fingerprint") != fp:
            self._state.held[qualified] = {
                "fingerprint": fp,
                "approved_fingerprint": known,
                "since": time.time(),
                "definition": definition,
            }
            self._store.save(self._state)
        return False

    def held(self) -> dict[str, dict[str, Any]]:
        return dict(self._state.held)

    def approve(self, qualified: str) -> None:
        held = self._state.held.pop(qualified, None)
        if held is None:
            raise NotFound(f"tool {qualified!r} is not held (held: {sorted(self._state.held)})")
        self._state.fingerprints[qualified] = held["fingerprint"]
        self._store.save(self._state)

    def forget_tools(self, namespace: str) -> None:
        prefix = f"{namespace}."
        for table in (self._state.fingerprints, self._state.held):
            for key in [k for k in table if k.startswith(prefix)]:
                del table[key]
        self._store.save(self._state)
