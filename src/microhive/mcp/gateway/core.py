"""The gateway's state and behaviour: upstream pools, the tool catalogue, routing.

:class:`Gateway` is an async context manager owning one task group in which every
upstream's pooled session lives, plus a maintenance loop (health checks, TTL
refresh of tool lists, refreshes asked for by ``tools/list_changed``). The MCP
endpoint and the admin REST API (``http.py``) are thin layers over it.

Routing is a dict from namespace to the *current* ``(pool, guard)`` pair. A call
reads that pair once, synchronously, and keeps it to the end, which is what makes
**hot swap** safe: :meth:`Gateway.attach` connects the new upstream and lists its
tools first, then replaces the pair in one assignment; calls already running
finish on the old pool, new calls take the new one, and the old pool is closed
once it has drained.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from microhive.context import CallContext, trace_carrier
from microhive.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    MicrohiveError,
    NotFound,
    ServiceUnavailable,
    TimeoutFailure,
)
from microhive.tracing import background, context_attributes

from ..registry import Registry, UpstreamSpec
from ..resilience import Guard, ResiliencePolicy
from ..retrieval import CachingEmbedder, Mode, ToolDoc, ToolRetriever
from .naming import NameTable
from .roles import Caller, RoleAuth
from .upstream import UpstreamPool

__all__ = ["Gateway", "GatewaySettings", "ToolEntry", "tool_error"]

log = logging.getLogger(__name__)

#: ``_meta`` keys that belong to one hop and are never forwarded as-is.
_HOP_LOCAL_PREFIXES = ("io.microhive/", "io.modelcontextprotocol/")
_HOP_LOCAL_KEYS = frozenset({"traceparent", "tracestate", "progressToken"})


@dataclass(frozen=True)
class GatewaySettings:
    """Gateway service ``settings`` (besides ``upstreams``, read by the registry)."""

    refresh_ttl: float = 60.0
    health_interval: float = 10.0
    drain_timeout: float = 30.0
    connect_timeout: float = 10.0
    registry_file: str = "gateway-registry.json"
    #: keep a ``subscriptions/listen`` stream open to 2026-07-28 upstreams, so tool
    #: changes arrive at once (else only on the TTL); note that an open stream makes
    #: the upstream wait its grace period when it shuts down
    listen: bool = True
    #: embedder for tool retrieval (``minilm``, ``hashing``, ...); ``none``: keywords only
    embedder: str = "minilm"
    resilience: ResiliencePolicy = field(default_factory=ResiliencePolicy)

    @classmethod
    def from_settings(cls, raw: Mapping[str, Any]) -> GatewaySettings:
        values = {k: v for k, v in raw.items() if k not in ("upstreams",)}
        policy = ResiliencePolicy.from_settings(values.pop("resilience", None))
        known = set(cls.__dataclass_fields__) - {"resilience"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown gateway setting(s) {unknown}; expected {sorted(known)}")
        return cls(resilience=policy, **values)


@dataclass(frozen=True)
class ToolEntry:
    """One tool as the gateway serves it."""

    public: str
    qualified: str
    namespace: str
    name: str
    tool: types.Tool
    held: bool
    retryable: bool


def tool_error(error: MicrohiveError) -> types.CallToolResult:
    """A tool error result carrying our error code and message."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{error.code}: {error.message}")],
        is_error=True,
        _meta={"io.microhive/error": error.to_dict()},
    )


def _forward_meta(meta: Mapping[str, Any] | None, nxt: CallContext) -> dict[str, Any]:
    kept = {
        k: v
        for k, v in (meta or {}).items()
        if k not in _HOP_LOCAL_KEYS and not k.startswith(_HOP_LOCAL_PREFIXES)
    }
    kept.update(nxt.to_meta())
    return kept


def _relay(result: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's copy of an upstream result: content, structured content, error flag,
    and ``_meta`` minus the upstream's protocol stamps (our server adds its own)."""
    # resultType: required on the 2026-07-28 wire, sieved out for earlier callers
    relayed: dict[str, Any] = {"resultType": "complete", "content": result.get("content", [])}
    if "structuredContent" in result:
        relayed["structuredContent"] = result["structuredContent"]
    if "isError" in result:
        relayed["isError"] = result["isError"]
    notes = {
        k: v
        for k, v in (result.get("_meta") or {}).items()
        if not k.startswith("io.modelcontextprotocol/")
    }
    if notes:
        relayed["_meta"] = notes
    return relayed


class Gateway:
    """Registry + pooled upstream sessions + catalogue + role-filtered routing."""

    def __init__(
        self,
        registry: Registry,
        auth: RoleAuth,
        settings: GatewaySettings | None = None,
        *,
        upstream_token: str | None = None,
    ) -> None:
        self.registry = registry
        self.auth = auth
        self.settings = settings or GatewaySettings()
        self._upstream_token = upstream_token
        self._names = NameTable()
        self._routes: dict[str, tuple[UpstreamPool, Guard]] = {}
        self._entries: dict[str, ToolEntry] = {}
        self._refreshed: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._wake = anyio.Event()
        self._tg: TaskGroup | None = None
        self._listeners: list[Any] = []
        self.version = 0
        self._retriever: tuple[int, ToolRetriever] | None = None
        self._embedder: Any = None
        self._retriever_lock = anyio.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Gateway:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            for spec in self.registry.upstreams().values():
                await self._add_route(spec)
            # A slow upstream must not hold up start-up: what is not listed within
            # the connect timeout is listed by the maintenance loop later. Nobody
            # asked for these listings: their traces are background ones.
            with background(), anyio.move_on_after(self.settings.connect_timeout):
                async with anyio.create_task_group() as first:
                    for ns in list(self._routes):
                        first.start_soon(self._refresh_quietly, ns)
            self._tg.start_soon(self._maintain)
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._tg is None:
            return
        tg, self._tg = self._tg, None
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as closing:
                for pool, _ in list(self._routes.values()):
                    closing.start_soon(pool.aclose)
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)

    @property
    def running(self) -> bool:
        return self._tg is not None

    def _task_group(self) -> TaskGroup:
        if self._tg is None:
            raise ServiceUnavailable("the gateway is not running (use 'async with Gateway(...)')")
        return self._tg

    async def _new_pool(self, spec: UpstreamSpec) -> tuple[UpstreamPool, Guard]:
        pool = UpstreamPool(
            spec,
            token=self._upstream_token,
            connect_timeout=self.settings.connect_timeout,
            on_tools_changed=self._on_tools_changed,
            listen=self.settings.listen,
        )
        await pool.start(self._task_group())
        return pool, Guard(f"{spec.namespace} ({spec.url})", self.settings.resilience)

    async def _add_route(self, spec: UpstreamSpec) -> None:
        self._routes[spec.namespace] = await self._new_pool(spec)

    def _on_tools_changed(self, pool: UpstreamPool) -> None:
        current = self._routes.get(pool.namespace)
        if current is not None and current[0] is pool:
            self._dirty.add(pool.namespace)
            self._wake.set()

    async def _maintain(self) -> None:
        """Health checks, TTL refreshes and change-driven refreshes, forever.

        All of it is background work: each check or listing is a trace of its own,
        marked so that ``microhive trace`` does not list it among users' runs.
        """
        with background():
            await self._maintain_loop()

    async def _maintain_loop(self) -> None:
        last_health = time.monotonic()
        while True:
            with anyio.move_on_after(min(self.settings.health_interval, self.settings.refresh_ttl)):
                await self._wake.wait()
            self._wake = anyio.Event()
            now = time.monotonic()
            due = set(self._dirty)
            self._dirty.clear()
            for ns in self._routes:
                if now - self._refreshed.get(ns, 0.0) >= self.settings.refresh_ttl:
                    due.add(ns)
            check = now - last_health >= self.settings.health_interval
            if check:
                last_health = now
            # one slow upstream must not delay the others: all at once, each bounded
            async with anyio.create_task_group() as tg:
                for ns in sorted(due):
                    tg.start_soon(self._refresh_quietly, ns)
                for ns, (pool, guard) in list(self._routes.items()):
                    if check and ns not in due and guard.breaker.state.value == "closed":
                        tg.start_soon(self._ping, pool)

    async def _ping(self, pool: UpstreamPool) -> None:
        with anyio.move_on_after(self.settings.resilience.timeout) as scope:
            await pool.ping()
        if scope.cancelled_caught:
            pool.healthy = False
            pool.last_error = f"no answer to a health check in {self.settings.resilience.timeout}s"

    async def _refresh_quietly(self, namespace: str) -> None:
        try:
            await self.refresh(namespace)
        except MicrohiveError as exc:
            log.warning("cannot list tools of %s: %s", namespace, exc.message)
        except Exception:  # a background refresh must never take the gateway down
            log.exception("refreshing the tools of %s failed", namespace)

    # -- catalogue ---------------------------------------------------------------------
    async def refresh(self, namespace: str) -> list[ToolEntry]:
        """List an upstream's tools again and rebuild its catalogue entries."""
        route = self._routes.get(namespace)
        if route is None:
            raise NotFound(f"no upstream for namespace {namespace!r}")
        pool, _ = route
        try:
            with anyio.fail_after(self.settings.resilience.timeout):
                tools = await pool.list_tools()
        except TimeoutError:
            pool.healthy = False
            raise TimeoutFailure(
                f"{namespace}: no tool list within {self.settings.resilience.timeout}s"
            ) from None
        if self._routes.get(namespace, (None,))[0] is not pool:
            return []  # swapped while listing: the new pool's listing wins
        return self._rebuild(namespace, tools)

    def _rebuild(self, namespace: str, tools: list[types.Tool]) -> list[ToolEntry]:
        before = {p: e for p, e in self._entries.items() if e.namespace == namespace}
        entries = {p: e for p, e in self._entries.items() if e.namespace != namespace}
        built: list[ToolEntry] = []
        for tool in tools:
            qualified = f"{namespace}.{tool.name}"
            definition = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
            approved = self.registry.check_tool(qualified, definition)
            public = self._names.assign(namespace, tool.name)
            notes = dict(tool.meta or {})
            notes["io.microhive/qualified-name"] = qualified
            served = tool.model_copy(update={"name": public, "meta": notes})
            ann = tool.annotations
            retryable = bool(ann and (ann.read_only_hint or ann.idempotent_hint))
            entry = ToolEntry(
                public, qualified, namespace, tool.name, served, not approved, retryable
            )
            entries[public] = entry
            built.append(entry)
            old = before.get(public)
            if not approved and (old is None or not old.held):
                log.warning("tool %s changed after registration: held for approval", qualified)
        self._entries = entries
        self._refreshed[namespace] = time.monotonic()
        if {e.public: e for e in built} != before:
            self._changed()  # only a real change invalidates the retriever and notifies callers
        return built

    def _changed(self) -> None:
        self.version += 1
        for listener in list(self._listeners):
            listener()

    def on_change(self, listener: Any) -> None:
        """Call ``listener()`` whenever the set of served tools may have changed."""
        self._listeners.append(listener)

    def visible(self, caller: Caller) -> list[ToolEntry]:
        """The tools ``caller`` may see: allowed by its globs and not held."""
        return [e for e in self._entries.values() if not e.held and caller.allows(e.qualified)]

    def input_schema(self, public: str) -> dict[str, Any] | None:
        entry = self._entries.get(public)
        return dict(entry.tool.input_schema) if entry is not None else None

    def catalogue(self) -> list[dict[str, Any]]:
        """Every tool with its service, version, health and state (for ``microhive tools``)."""
        rows: list[dict[str, Any]] = []
        for entry in sorted(self._entries.values(), key=lambda e: e.qualified):
            pool, guard = self._routes[entry.namespace]
            rows.append(
                {
                    "tool": entry.public,
                    "qualified": entry.qualified,
                    "namespace": entry.namespace,
                    "service": pool.spec.service or pool.spec.url,
                    "url": pool.spec.url,
                    "version": pool.spec.version,
                    "health": self._health(pool, guard),
                    "held": entry.held,
                    "description": entry.tool.description or "",
                }
            )
        return rows

    def upstreams(self) -> list[dict[str, Any]]:
        out = []
        for ns, (pool, guard) in sorted(self._routes.items()):
            row = pool.spec.to_dict()
            row.update(guard.snapshot())
            row.update(
                health=self._health(pool, guard),
                tools=sum(1 for e in self._entries.values() if e.namespace == ns),
                calls=pool.calls,
                last_error=pool.last_error,
            )
            out.append(row)
        return out

    @staticmethod
    def _health(pool: UpstreamPool, guard: Guard) -> str:
        state = guard.breaker.state.value
        if state != "closed":
            return f"breaker-{state}"
        return {True: "healthy", False: "unhealthy", None: "unknown"}[pool.healthy]

    # -- calls -------------------------------------------------------------------------
    async def call(
        self,
        caller: Caller,
        public: str,
        arguments: dict[str, Any] | None,
        meta: Mapping[str, Any] | None,
    ) -> types.CallToolResult | dict[str, Any]:
        """Route one ``tools/call``; every failure comes back as a tool error result.

        A forwarded result is returned in its wire form (a dict the SDK's server
        serialises as it is), a refusal as a ``CallToolResult``.
        """
        entry = self._entries.get(public)
        who = f"role {caller.role!r}" if caller.role else "this caller"
        if entry is None or not caller.allows(entry.qualified):
            if entry is not None:
                return tool_error(InvalidInput(f"tool {public!r} is not allowed for {who}"))
            return tool_error(NotFound(f"unknown tool {public!r}"))
        if entry.held:
            return tool_error(
                Conflict(
                    f"tool {entry.qualified!r} changed its description or schema after "
                    "registration and is held until an operator approves it"
                )
            )
        # The MCP SDK already traces this hop: its server span for the incoming
        # call (parented from params._meta) and its client span for the forwarded
        # one. The gateway annotates the server span instead of adding a third span,
        # and the call it forwards follows that span; untraced, the caller's context
        # is activated so its trace id still flows.
        span = trace.get_current_span()
        traced = span.is_recording()
        try:
            ctx = CallContext.from_meta(meta, trace=trace_carrier() if traced else None)
            ctx.check()
            ctx.next_hop()  # refuse before any work when nothing may be forwarded
        except MicrohiveError as exc:
            return tool_error(exc)
        route = self._routes.get(entry.namespace)
        if route is None:
            return tool_error(NotFound(f"namespace {entry.namespace!r} is no longer registered"))
        pool, guard = route
        if traced:
            span.set_attributes(
                {
                    "mcp.tool.name": entry.qualified,
                    "microhive.upstream": pool.spec.url,
                    "microhive.role": caller.role or "",
                    **context_attributes(ctx),
                }
            )
        with contextlib.nullcontext() if traced else ctx.activate():
            nxt = ctx.next_hop()
            forwarded = _forward_meta(meta, nxt)

            async def attempt() -> dict[str, Any]:
                return await pool.forward(entry.name, arguments, forwarded)

            try:
                result = await guard.run(attempt, retryable=entry.retryable, deadline=nxt.deadline)
            except MicrohiveError as exc:
                if traced:
                    span.set_status(Status(StatusCode.ERROR, exc.message))
                    span.set_attribute("microhive.error", exc.code)
                return tool_error(exc)
            if traced and result.get("isError"):
                span.set_attribute("mcp.tool.is_error", True)
        return _relay(result)

    # -- retrieval ---------------------------------------------------------------------
    async def search(
        self, caller: Caller, task: str, k: int = 8, mode: Mode = "fused"
    ) -> list[tuple[ToolEntry, float]]:
        """The ``k`` tools visible to ``caller`` that best fit ``task`` (best first)."""
        if not isinstance(task, str) or not task.strip():
            raise InvalidInput("search needs a non-empty task text")
        retriever = await self._current_retriever()
        visible = {e.qualified: e for e in self.visible(caller)}
        vector = None
        if retriever.has_embeddings and mode != "keyword":
            vectors = await anyio.to_thread.run_sync(retriever.embed_queries, [task])
            vector = vectors[0]
        hits = retriever.search(
            task, k, mode=mode, allowed=visible.__contains__, query_vector=vector
        )
        return [(visible[h.qualified], h.score) for h in hits]

    async def _current_retriever(self) -> ToolRetriever:
        async with self._retriever_lock:
            if self._retriever is not None and self._retriever[0] == self.version:
                return self._retriever[1]
            version = self.version
            docs = [
                ToolDoc(e.qualified, e.tool.description or "", dict(e.tool.input_schema))
                for e in self._entries.values()
            ]
            embedder = await self._load_embedder()
            retriever = await anyio.to_thread.run_sync(ToolRetriever, docs, embedder)
            self._retriever = (version, retriever)
            return retriever

    async def _load_embedder(self) -> Any:
        if self._embedder is None and self.settings.embedder != "none":
            from microhive.embeddings import open_embedder

            try:
                inner = await anyio.to_thread.run_sync(open_embedder, self.settings.embedder)
                self._embedder = CachingEmbedder(inner)
            except MicrohiveError as exc:
                log.warning("tool retrieval without embeddings: %s", exc.message)
                self._embedder = False
        return self._embedder or None

    # -- admin -------------------------------------------------------------------------
    async def register(self, spec: UpstreamSpec) -> dict[str, Any]:
        """Add a namespace (or re-point an existing one, like :meth:`attach`)."""
        if spec.namespace in self._routes:
            return await self.attach(spec.namespace, spec.url, spec.version)
        route = await self._connect(spec)
        self.registry.register(spec)
        self._routes[spec.namespace] = route
        self._rebuild(spec.namespace, route[0].tools)
        return self._describe(spec.namespace)

    async def attach(self, namespace: str, url: str, version: str = "") -> dict[str, Any]:
        """Hot swap: serve ``namespace`` from a new endpoint without failing a call."""
        old = self._routes.get(namespace)
        if old is None:
            raise NotFound(f"no upstream for namespace {namespace!r}; register it first")
        spec = UpstreamSpec(namespace, url, version, old[0].spec.service)
        route = await self._connect(spec)
        self.registry.attach(namespace, url, version)
        self._routes[namespace] = route
        self._rebuild(namespace, route[0].tools)
        self._task_group().start_soon(self._retire, old[0])
        return self._describe(namespace)

    async def unregister(self, namespace: str) -> dict[str, Any]:
        described = self._describe(namespace)
        self.registry.unregister(namespace)
        pool, _ = self._routes.pop(namespace)
        self._entries = {p: e for p, e in self._entries.items() if e.namespace != namespace}
        self._changed()
        self._task_group().start_soon(self._retire, pool)
        return described

    def approve(self, qualified: str) -> None:
        """Accept a held tool's new definition; it is listed and callable again."""
        self.registry.approve(qualified)
        entries = dict(self._entries)
        for public, entry in entries.items():
            if entry.qualified == qualified:
                entries[public] = ToolEntry(
                    entry.public,
                    entry.qualified,
                    entry.namespace,
                    entry.name,
                    entry.tool,
                    False,
                    entry.retryable,
                )
        self._entries = entries
        self._changed()

    async def _connect(self, spec: UpstreamSpec) -> tuple[UpstreamPool, Guard]:
        pool, guard = await self._new_pool(spec)
        try:
            with anyio.fail_after(self.settings.connect_timeout):
                await pool.list_tools()
        except (MicrohiveError, TimeoutError) as exc:
            await pool.aclose()
            detail = exc.message if isinstance(exc, MicrohiveError) else "timed out"
            raise ServiceUnavailable(
                f"cannot reach {spec.url} for namespace {spec.namespace!r}: {detail}"
            ) from exc
        return pool, guard

    async def _retire(self, pool: UpstreamPool) -> None:
        drained = await pool.drain(self.settings.drain_timeout)
        if not drained:
            log.warning(
                "upstream %s: %d call(s) still running at close", pool.spec.url, pool.in_flight
            )
        await pool.aclose()

    def _describe(self, namespace: str) -> dict[str, Any]:
        for row in self.upstreams():
            if row["namespace"] == namespace:
                return row
        raise NotFound(f"no upstream for namespace {namespace!r}")
