"""The orchestrator as a mesh service (kind ``orchestrator``): REST + server-sent events.

=====================================  ==============================================
``POST /runs``                         ``{"goal": ..., "options": {timeout, budget_steps,
                                       budget_tokens, models: {role: model}}}`` -> 202
                                       ``{"id": ...}``; stored before the answer.
                                       With ``"plan": {"tasks": [...]}`` the planner is
                                       skipped (the goal defaults to the plan's); an
                                       invalid plan is a 400 with the reason
``GET /runs``                          recent runs
``GET /runs/{id}``                     the run, its plan and every sub-task's state
``GET /runs/{id}/events``              server-sent events: the run's history, then live
                                       until it ends (``Last-Event-ID`` resumes)
``POST /runs/{id}/cancel``             stop a run
=====================================  ==============================================

Settings (``services.<name>.settings``): ``max_attempts`` (default 2),
``plan_attempts`` (3), ``planner_role`` (``planner``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from microhive.bus import bus_from_spec, register_bus_metrics
from microhive.errors import InvalidInput
from microhive.models import open_model
from microhive.orchestrator.engine import Orchestrator, RunOptions
from microhive.orchestrator.store import RunStatus, open_store
from microhive.service import Service, ServiceContext
from microhive.tracing import register_call_metrics

__all__ = ["create_service"]

# A goal with its own plan: up to 64 sub-tasks of up to 8,000-character instructions.
_MAX_RUN_BODY = 1024 * 1024


def create_service(ctx: ServiceContext) -> Service:
    settings = dict(ctx.spec.settings)
    planner_role = str(settings.pop("planner_role", "planner"))
    max_attempts = int(settings.pop("max_attempts", 2))
    plan_attempts = int(settings.pop("plan_attempts", 3))
    if settings:
        raise InvalidInput(
            f"services.{ctx.name}.settings: unknown keys {', '.join(sorted(settings))} "
            "(expected planner_role, max_attempts, plan_attempts)"
        )
    mesh = ctx.mesh
    roles = {n: r.description or n for n, r in mesh.roles.items() if n != planner_role}
    planner_spec = mesh.models.get(
        mesh.roles[planner_role].model if planner_role in mesh.roles else "default"
    )
    service = Service(ctx)
    calls = register_call_metrics(service.registry)  # the planner's model calls
    state: dict[str, Any] = {}
    register_bus_metrics(service.registry, lambda: state.get("bus"))  # worker events backlog

    @service.on_startup
    async def start() -> None:
        # The planner first: a missing key or SDK fails the start with one line
        # before anything else is opened.
        planner = open_model(planner_spec, mesh=mesh, state_dir=ctx.state_dir)
        planner.call_metrics = calls
        store = open_store(mesh.stores.workflow)
        await store.open()
        bus = bus_from_spec(mesh.bus)
        await bus.start()
        orch = Orchestrator(
            store=store,
            bus=bus,
            planner=planner,
            roles=roles,
            max_attempts=max_attempts,
            plan_attempts=plan_attempts,
        )
        await orch.start()
        state.update(store=store, bus=bus, orch=orch)

    @service.on_shutdown
    async def stop() -> None:
        orch: Orchestrator | None = state.get("orch")
        if orch is not None:
            await orch.aclose()
            await orch.planner.aclose()
        if "bus" in state:
            await state["bus"].aclose()
        if "store" in state:
            await state["store"].aclose()

    async def bus_ready() -> None:
        await state["bus"].ping()

    service.add_ready_check("bus", bus_ready)

    def orch() -> Orchestrator:
        return state["orch"]  # type: ignore[no-any-return]

    @service.route("/runs", methods=["POST"])
    async def create_run(request: Request) -> JSONResponse:
        body = await _json_body(request)
        plan = body.get("plan")
        if plan is not None and not isinstance(plan, dict | list):
            raise InvalidInput("'plan' must be an object with 'tasks' (or a list of tasks)")
        goal = body.get("goal")
        if goal is None and isinstance(plan, dict):
            goal = plan.get("goal")  # a plan may carry its goal
        if not isinstance(goal, str):
            raise InvalidInput("body must have a 'goal' string (or a plan with one)")
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            raise InvalidInput("'options' must be an object")
        unknown = set(body) - {"goal", "options", "plan"}
        if unknown:
            raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
        run = await orch().submit(goal, RunOptions.from_dict(options), plan=plan)
        info = await orch().get(run.id)
        return JSONResponse(info, status_code=202, headers={"Location": f"/runs/{run.id}"})

    @service.route("/runs")
    async def list_runs(request: Request) -> list[dict[str, Any]]:
        status = request.query_params.get("status")
        statuses = None
        if status:
            try:
                statuses = [RunStatus(s) for s in status.split(",")]
            except ValueError:
                raise InvalidInput(
                    f"status: expected some of {', '.join(s.value for s in RunStatus)}"
                ) from None
        runs = await orch().store.list_runs(statuses=statuses, limit=100)
        return [
            {"id": r.id, "goal": r.goal, "status": r.status.value, "created_at": r.created_at}
            for r in runs
        ]

    @service.route("/runs/{run_id}")
    async def get_run(request: Request) -> dict[str, Any]:
        return await orch().get(request.path_params["run_id"])

    @service.route("/runs/{run_id}/cancel", methods=["POST"])
    async def cancel_run(request: Request) -> dict[str, Any]:
        await orch().cancel(request.path_params["run_id"])
        return await orch().get(request.path_params["run_id"])

    @service.route("/runs/{run_id}/events")
    async def run_events(request: Request) -> StreamingResponse:
        run_id = request.path_params["run_id"]
        await orch().store.get_run(run_id)  # 404 before the stream starts
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not raw.isdigit():
            raise InvalidInput(f"Last-Event-ID must be a sequence number, got {raw!r}")

        async def stream() -> AsyncIterator[bytes]:
            async for event in orch().follow(run_id, after=int(raw)):
                data = json.dumps({"type": event.type, "at": event.at, **event.data})
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return service


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_RUN_BODY:
        raise InvalidInput(f"body is {len(raw)} bytes; at most {_MAX_RUN_BODY} are allowed")
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body
