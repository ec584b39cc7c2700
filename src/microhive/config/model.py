"""The shape of a mesh file, as pydantic models.

Every model forbids unknown keys, so a typo is an error with its line number
rather than a silently ignored setting. Cross-field rules (a role naming a model
that exists, replicas whose ports collide, ...) live in validators here so the
loader can point at the offending line.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BusSpec",
    "MeshConfig",
    "ModelSpec",
    "RoleSpec",
    "SecuritySpec",
    "ServiceSpec",
    "StoresSpec",
    "TracingSpec",
]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

#: The kinds of service a mesh can run. ``app`` and ``command`` are generic; the
#: others are microhive's own services, added by the issues that build them.
#: A kind maps to the ASGI factory the supervisor starts (``None``: given by ``app``
#: or ``command`` in the service entry).
SERVICE_KINDS: dict[str, str | None] = {
    "app": None,
    "command": None,
    "orchestrator": "microhive.orchestrator.service:create_service",
    "worker": "microhive.agents.service:create_service",
    "workspace": "microhive.workspace.service:create_service",
    "tool": "microhive.mcp.services:create_service",
    "openapi-tools": "microhive.mcp.openapi:create_service",
    "calculator-rest": "microhive.tools.calculator:create_service",
    "pdf": "microhive.tools.pdf:create_service",
    "web": "microhive.tools.web:create_service",
    "sentiment": "microhive.tools.sentiment:create_service",
    "notifier": "microhive.tools.notifier:create_service",
    "gateway": "microhive.mcp.gateway.service:create_service",
    "hive-indexer": "microhive.hive.indexer:create_service",
    "hive-sentiment": "microhive.hive.sentiment:create_service",
    "hive-notifier": "microhive.hive.notifier:create_service",
    "model-server": "microhive.modelserver.service:create_service",
}


class ReferenceProblem(ValueError):
    """A cross-field problem, carrying the key path it is about (for the line number)."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSpec(_Strict):
    """One service of the mesh; ``replicas`` copies run as separate processes."""

    kind: str = Field(description="what the service is: one of SERVICE_KINDS")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="first port; replica i listens on port + i. Omit to pick free ports.",
    )
    host: str | None = Field(default=None, description="bind address (default: the mesh host)")
    replicas: int = Field(default=1, ge=1, le=64)
    app: str | None = Field(
        default=None, description="'module:factory' returning an ASGI app (kind: app)"
    )
    command: list[str] | None = Field(
        default=None,
        description="argv to run (kind: command); {port} and {host} are substituted",
    )
    env: dict[str, str] = Field(default_factory=dict)
    ready_path: str | None = Field(
        default="/readyz", description="HTTP path that answers 200 when ready; null: process up"
    )
    depends_on: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict, description="kind-specific settings")
    grace_period: float = Field(default=10.0, gt=0, le=600)
    startup_timeout: float = Field(default=30.0, gt=0, le=600)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in SERVICE_KINDS:
            known = ", ".join(sorted(SERVICE_KINDS))
            raise ValueError(f"unknown service kind {value!r}; expected one of: {known}")
        return value

    @field_validator("app")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not _IMPORT_PATH.match(value):
            raise ValueError(f"expected 'package.module:factory', got {value!r}")
        return value

    @field_validator("command")
    @classmethod
    def _nonempty_command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("expected a non-empty list: the program and its arguments")
        return value

    @field_validator("ready_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"expected a path starting with '/', got {value!r}")
        return value

    @model_validator(mode="after")
    def _kind_needs(self) -> ServiceSpec:
        if self.kind == "app" and self.app is None:
            raise ValueError("a service of kind 'app' needs 'app: package.module:factory'")
        if self.kind == "command" and self.command is None:
            raise ValueError("a service of kind 'command' needs 'command: [program, args...]'")
        if self.kind not in ("app", "command") and self.command is not None:
            raise ValueError(f"'command' is only for kind 'command', not {self.kind!r}")
        return self

    def ports(self) -> list[int | None]:
        """The port of each replica (``None`` where one is picked at start)."""
        if self.port is None:
            return [None] * self.replicas
        return [self.port + i for i in range(self.replicas)]


class BusSpec(_Strict):
    """Where events go. ``embedded://PATH`` needs no server; ``nats://``, ``redis://`` scale."""

    url: str = "embedded://.microhive/bus"
    max_deliveries: int = Field(default=5, ge=1, le=1000)
    dedup_window: float = Field(default=120.0, gt=0, description="seconds")


class StoresSpec(_Strict):
    """Durable state: the workflow store, the trace store and the workspace."""

    workflow: str = "sqlite:///.microhive/workflow.db"
    traces: str = "sqlite:///.microhive/traces.db"
    workspace: str = "file://.microhive/workspace"


class TracingSpec(_Strict):
    """Tracing: spans go to ``stores.traces``, and over OTLP/HTTP when an endpoint is set."""

    enabled: bool = True
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318 "
        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT; unset: no OTLP export)",
    )
    capture_content: bool = Field(
        default=False, description="record prompts, tool arguments and results on spans"
    )
    max_spans: int | None = Field(
        default=200_000, ge=1, description="trace store keeps at most this many spans"
    )
    max_age_hours: float | None = Field(
        default=168.0, gt=0, description="trace store drops traces older than this"
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="share of new traces recorded; a run is traced whole or not at all",
    )


class ModelSpec(_Strict):
    """A model a role can use. ``offline`` needs no key and no network."""

    provider: Literal["offline", "openai", "anthropic", "scripted"] = "offline"
    model: str = "offline"
    base_url: str | None = None
    service: str | None = Field(
        default=None,
        description="name of a mesh service (kind model-server) that serves this model; "
        "its URL is used instead of base_url and no API key is needed",
    )
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the API key"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout: float = Field(
        default=120.0, gt=0, le=86400, description="seconds one model call may take"
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="retries of a call that failed for a passing reason (rate limit, 5xx, "
        "timeout, connection refused); each is a span event and a run event",
    )
    context_size: int | None = Field(
        default=None, ge=256, description="the model's context window in tokens"
    )
    tool_calls: Literal["auto", "native", "content"] = Field(
        default="auto",
        description="how the model's tool calls arrive: 'native' tool_calls only, "
        "'content' (JSON written in the text, bare, fenced or in <tool_call> tags, "
        "recovered into real calls), or 'auto' (native, else recovered from the text)",
    )
    stream: bool | None = Field(
        default=None,
        description="stream tokens into the run's events (default: on for a model served "
        "by a mesh service, off for hosted APIs)",
    )
    tool_arguments: Literal["all", "essential"] | None = Field(
        default=None,
        description="'essential' leaves out of the tools shown to the model the optional "
        "arguments that have a default (a small model fills every field it sees, often "
        "wrongly); default: essential for a model served by a mesh service, else all",
    )

    @model_validator(mode="after")
    def _service_or_url(self) -> ModelSpec:
        if self.service is not None and self.base_url is not None:
            raise ValueError("give either 'service' or 'base_url', not both")
        if self.service is not None and self.provider != "openai":
            raise ValueError("'service' needs provider 'openai' (a model server speaks it)")
        return self


class RoleSpec(_Strict):
    """An agent role: its model and the tools (globs over namespaced names) it may use."""

    model: str = "default"
    description: str = Field(default="", description="what the role does (shown to the planner)")
    tools: list[str] = Field(default_factory=list)
    max_steps: int = Field(default=8, ge=1, le=1000)
    top_k_tools: int = Field(default=8, ge=1, le=200)
    token_env: str | None = Field(
        default=None, description="environment variable holding this role's gateway token"
    )
    prefetch: bool | None = Field(
        default=None,
        description="put in each sub-task's prompt, before the agent starts, the files it "
        "reads (inputs.read and its dependencies' declared outputs) and the workspace's "
        "best hits for its query; default: on when the role's model is served by a mesh "
        "service (a small local model rarely searches or reads by itself)",
    )


class SecuritySpec(_Strict):
    """Defaults are safe: loopback binds, no private targets, same-origin MCP."""

    token_env: str | None = Field(
        default=None,
        description="environment variable holding the service-to-service bearer token",
    )
    allow_private_targets: bool = False
    allowed_origins: list[str] = Field(default_factory=list)


class MeshConfig(_Strict):
    """A whole mesh: its services, bus, stores, models and agent roles."""

    version: Literal[1] = 1
    name: str = "microhive"
    host: str = "127.0.0.1"
    bus: BusSpec = Field(default_factory=BusSpec)
    stores: StoresSpec = Field(default_factory=StoresSpec)
    tracing: TracingSpec = Field(default_factory=TracingSpec)
    models: dict[str, ModelSpec] = Field(default_factory=lambda: {"default": ModelSpec()})
    roles: dict[str, RoleSpec] = Field(default_factory=dict)
    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    security: SecuritySpec = Field(default_factory=SecuritySpec)

    @field_validator("services", "roles", "models")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"name {name!r} must be lowercase letters, digits and '-', "
                    "starting with a letter (at most 63 characters)"
                )
        return value

    @model_validator(mode="after")
    def _references(self) -> MeshConfig:
        for name, role in self.roles.items():
            if role.model not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise ReferenceProblem(
                    ("roles", name, "model"), f"no model named {role.model!r} (models: {known})"
                )
        for name, model in self.models.items():
            if model.service is not None and model.service not in self.services:
                known = ", ".join(sorted(self.services)) or "none"
                raise ReferenceProblem(
                    ("models", name, "service"),
                    f"no service named {model.service!r} (services: {known})",
                )
        taken: dict[tuple[str, int], str] = {}
        for name, svc in self.services.items():
            for dep in svc.depends_on:
                if dep not in self.services:
                    raise ReferenceProblem(
                        ("services", name, "depends_on"), f"no service named {dep!r}"
                    )
            host = svc.host or self.host
            for port in svc.ports():
                if port is None:
                    continue
                other = taken.get((host, port))
                if other is not None:
                    raise ReferenceProblem(
                        ("services", name, "port"),
                        f"port {port} on {host} is already used by service {other!r}",
                    )
                taken[(host, port)] = name
        _check_dependency_cycles(self.services)
        return self

    def service(self, name: str) -> ServiceSpec:
        from microhive.errors import NotFound

        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise NotFound(f"no service named {name!r} in the mesh (services: {known})") from None

    def start_order(self) -> list[str]:
        """Service names with every dependency before its dependants."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for dep in self.services[name].depends_on:
                visit(dep)
            order.append(name)

        for name in self.services:
            visit(name)
        return order


def _check_dependency_cycles(services: dict[str, ServiceSpec]) -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ReferenceProblem(
                ("services", name, "depends_on"),
                f"services depend on each other in a cycle: {cycle}",
            )
        state[name] = 1
        for dep in services[name].depends_on:
            visit(dep, [*path, name])
        state[name] = 2

    for name in services:
        visit(name, [])
