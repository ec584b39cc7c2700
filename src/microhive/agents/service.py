"""A worker as a mesh service (kind ``worker``): one role, N replicas, one queue group.

Settings (``services.<name>.settings``):

``role``          the agent role it serves (required; a key of ``roles:``)
``concurrency``   sub-tasks one replica works on at once (default 4)
``gateway``       the name of the gateway service whose tools it uses (default: the
                  mesh's ``gateway`` service if there is one, else no tools)
``ack_wait``      seconds before an unacknowledged sub-task goes to another
                  replica; the worker heartbeats well before it (default 30)
``workspace``     the name of the workspace service that declared outputs are
                  checked in (default: the mesh's ``workspace`` service, else the
                  first of kind ``workspace``; a sub-task that declares outputs
                  fails on a worker without one)

The role's model (``roles.<role>.model``) is opened when the replica starts, so
a missing API key or SDK fails the start with one line (exit code 78, not
retried by the supervisor); a run's ``options.models`` can replace it per run.
Its tools are the gateway's tools the role is allowed.

``/metrics`` adds model- and tool-call latency histograms (by outcome) and
``microhive_worker_tasks_in_flight``, the sub-tasks this replica is working on, and
the bus metrics (``microhive_bus_pending_messages``: the role's queue depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microhive.agents.loop import Toolbox
from microhive.agents.outputs import WorkspaceOutputs
from microhive.agents.worker import Worker
from microhive.bus import bus_from_spec, register_bus_metrics
from microhive.config import MeshConfig, RoleSpec
from microhive.errors import ConfigError
from microhive.models import open_model
from microhive.models.base import ModelProvider
from microhive.orchestrator.messages import TaskMessage
from microhive.service import Service, ServiceContext, mesh_token, service_url
from microhive.tracing import register_call_metrics

__all__ = ["create_service", "gateway_url"]


def gateway_url(mesh: MeshConfig, name: str, state_dir: Path | None = None) -> str:
    """The MCP endpoint of the mesh's gateway service ``name``."""
    return service_url(mesh, kind="gateway", name=name, state_dir=state_dir) + "/mcp"


def create_service(ctx: ServiceContext) -> Service:
    settings: dict[str, Any] = dict(ctx.spec.settings)
    where = f"services.{ctx.name}.settings"
    role = settings.pop("role", None)
    mesh = ctx.mesh
    if not isinstance(role, str) or role not in mesh.roles:
        known = ", ".join(sorted(mesh.roles)) or "none"
        raise ConfigError(
            f"role: expected one of the mesh's roles ({known}), got {role!r}", field=where
        )
    concurrency = int(settings.pop("concurrency", 4))
    ack_wait = float(settings.pop("ack_wait", 30.0))
    gateway = settings.pop("gateway", "gateway" if "gateway" in mesh.services else None)
    workspace = settings.pop("workspace", _default_workspace(mesh))
    if workspace is not None and workspace not in mesh.services:
        raise ConfigError(f"workspace: no service named {workspace!r}", field=where)
    if settings:
        raise ConfigError(f"unknown keys {', '.join(sorted(settings))}", field=where)
    role_spec = mesh.roles[role]
    url = gateway_url(mesh, gateway, ctx.state_dir) if gateway else None
    token = _role_token(role_spec.token_env)

    service = Service(ctx)
    calls = register_call_metrics(service.registry)
    models: dict[str, ModelProvider] = {}

    def model_for(name: str | None) -> ModelProvider:
        chosen = name or role_spec.model
        if chosen not in mesh.models:
            raise ConfigError(f"run asks for model {chosen!r}, which the mesh does not define")
        if chosen not in models:
            model = open_model(mesh.models[chosen], mesh=mesh, state_dir=ctx.state_dir)
            model.call_metrics = calls
            models[chosen] = model
        return models[chosen]

    state: dict[str, Any] = {}
    in_flight = service.metrics.gauge(
        "microhive_worker_tasks_in_flight", "Sub-tasks this worker replica is working on."
    )
    in_flight.set_function(lambda: state["worker"].active if "worker" in state else 0)
    register_bus_metrics(service.registry, lambda: state.get("bus"))  # queue depth

    async def toolbox_for(task: TaskMessage) -> Toolbox | None:
        return state.get("toolbox")

    @service.on_startup
    async def start() -> None:
        # The role's model first: a missing key or SDK fails this replica's start
        # (one line, and the supervisor does not retry it), not its first sub-task.
        model_for(None)
        bus = bus_from_spec(mesh.bus)
        await bus.start()
        state["bus"] = bus
        if url is not None:
            from microhive.agents.gateway_toolbox import GatewayToolbox

            toolbox = GatewayToolbox(url, token=token)
            await toolbox.start()
            state["toolbox"] = toolbox
        if workspace is not None:
            base = service_url(mesh, kind="workspace", name=workspace, state_dir=ctx.state_dir)
            state["outputs"] = WorkspaceOutputs(base, token=mesh_token(mesh))
        worker = Worker(
            bus=bus,
            role=role,
            model_for=model_for,
            toolbox_for=toolbox_for,
            max_steps=role_spec.max_steps,
            top_k=role_spec.top_k_tools,
            concurrency=concurrency,
            ack_wait=ack_wait,
            metrics=calls,
            check_outputs=state.get("outputs"),
            prefetch=state.get("outputs") if _prefetch(mesh, role_spec) else None,
        )
        await worker.start()
        state["worker"] = worker

    @service.on_shutdown
    async def stop() -> None:
        if "worker" in state:
            await state["worker"].aclose()
        if "toolbox" in state:
            await state["toolbox"].aclose()
        if "outputs" in state:
            await state["outputs"].aclose()
        for model in models.values():
            await model.aclose()
        if "bus" in state:
            await state["bus"].aclose()

    async def bus_ready() -> None:
        await state["bus"].ping()

    service.add_ready_check("bus", bus_ready)
    return service


def _prefetch(mesh: MeshConfig, role: RoleSpec) -> bool:
    if role.prefetch is not None:
        return role.prefetch
    model = mesh.models.get(role.model)
    return model is not None and model.service is not None


def _default_workspace(mesh: MeshConfig) -> str | None:
    spaces = [n for n, s in mesh.services.items() if s.kind == "workspace"]
    return "workspace" if "workspace" in spaces else (spaces[0] if spaces else None)


def _role_token(env_name: str | None) -> str | None:
    import os

    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(f"environment variable {env_name} (the role's gateway token) is not set")
    return value
