"""Tool services: plain Python functions served as MCP tools with one call.

::

    svc = ToolService("calc")

    @svc.tool(read_only=True, idempotent=True)
    def add(a: float, b: float) -> float:
        '''Add two numbers.

        Args:
            a: the first addend
            b: the second addend
        '''
        return a + b

    app = svc.asgi_app()         # streamable HTTP at /mcp (stateless, JSON responses)
    svc.run_stdio()              # or over stdio

or in one line, ``tool_service("calc", [add, mul])``. The official MCP SDK's
:class:`~mcp.server.mcpserver.MCPServer` does the protocol work: the input
schema comes from the signature (pydantic), the output schema from the return
annotation, the description from the docstring; this module adds what a mesh
needs on top:

* **annotations** (``read_only``, ``idempotent``, ``destructive``, ``open_world``)
  declared as keywords and carried in ``tools/list`` -- the gateway retries only
  tools marked read-only or idempotent;
* **per-argument descriptions** read from the docstring's ``Args:`` section;
* **the call context**: every ``tools/call`` decodes ``params._meta`` into a
  :class:`~microhive.context.CallContext`, refuses the call if its hops, deadline
  or budget have run out, and activates it, so the tool (sync or async) sees the
  trace, hops and deadline through ``CallContext.current()``;
* **tracing**: every ``tools/call`` is a ``tools/call {tool}`` server span whose
  parent is the caller's span from ``params._meta`` (the MCP conventions); a call
  refused for hops, deadline or budget is recorded on it as a stop event, a tool
  error as ERROR status; arguments and results only with ``capture_content``.
  With :attr:`ToolService.call_metrics` set, each call's latency goes to ``/metrics``;
* **clear tool errors**: an exception raised by a tool becomes an MCP tool error
  (``isError``) whose text names the error (``ZeroDivisionError: division by
  zero``, ``not_found: no file 'x'``), and the server keeps serving. Messages
  reach the caller, so tools must not put secrets in exception texts.

Tools with a hand-written JSON schema (the OpenAPI wrapper's) are added with
:meth:`ToolService.add_schema_tool`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import func_metadata
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.applications import Starlette

from microhive.errors import UsageError
from microhive.mcp._toolcall import error_text as _error_text
from microhive.mcp._toolcall import traced_call, traced_request, without_sdk_spans
from microhive.mcp.security import McpGuard
from microhive.tracing import CallMetrics

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "TOOL_NAME",
    "ToolService",
    "tool_annotations",
    "tool_service",
]

log = logging.getLogger(__name__)

#: Tool names valid for every large LLM API (OpenAI, Anthropic, Gemini).
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])
SchemaHandler = Callable[[dict[str, Any]], Awaitable[Any]]

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:\s*$")
_SECTION_HEADER = re.compile(r"^\s*(Returns?|Raises|Yields|Examples?|Notes?)\s*:\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def tool_annotations(
    *,
    title: str | None = None,
    read_only: bool | None = None,
    idempotent: bool | None = None,
    destructive: bool | None = None,
    open_world: bool | None = None,
) -> ToolAnnotations | None:
    """MCP tool annotations from plain keywords (``None`` when nothing is declared)."""
    values = {
        "title": title,
        "read_only_hint": read_only,
        "idempotent_hint": idempotent,
        "destructive_hint": destructive,
        "open_world_hint": open_world,
    }
    if all(v is None for v in values.values()):
        return None
    return ToolAnnotations(**{k: v for k, v in values.items() if v is not None})


def _split_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description without the ``Args:`` section, and the per-argument texts."""
    text = inspect.cleandoc(doc or "")
    lines = text.splitlines()
    kept: list[str] = []
    args: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            continue
        if in_args:
            if _SECTION_HEADER.match(line) or (line and not line[0].isspace()):
                in_args = False
            else:
                match = _ARG_LINE.match(line)
                if match and len(line) - len(line.lstrip()) <= 4:
                    current = match.group(1)
                    args[current] = match.group(2).strip()
                elif current and line.strip():
                    args[current] = f"{args[current]} {line.strip()}".strip()
                continue
        kept.append(line)
    return "\n".join(kept).strip(), args


def _guard(fn: F) -> F:
    """Wrap a tool so any exception becomes a ToolError with a readable message."""

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except ToolError:
                raise
            except Exception as exc:
                log.info("tool %s failed: %s", fn.__name__, _error_text(exc), exc_info=exc)
                raise ToolError(_error_text(exc)) from exc

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as exc:
            log.info("tool %s failed: %s", fn.__name__, _error_text(exc), exc_info=exc)
            raise ToolError(_error_text(exc)) from exc

    return wrapper  # type: ignore[return-value]


class _SchemaTool(Tool):
    """A tool whose input schema is given as JSON Schema, not derived from a signature."""

    handler: SchemaHandler = Field(exclude=True)
    validator: Any = Field(default=None, exclude=True)

    async def run(
        self,
        arguments: dict[str, Any],
        context: Context[Any, Any],
        convert_result: bool = False,
    ) -> Any:
        prefix = f"Error executing tool {self.name}"
        if self.validator is not None:
            problems = sorted(self.validator.iter_errors(arguments), key=lambda e: list(e.path))
            if problems:
                detail = "; ".join(
                    f"{'.'.join(str(p) for p in err.path) or '(arguments)'}: {err.message}"
                    for err in problems[:5]
                )
                raise ToolError(f"{prefix}: invalid arguments: {detail}")
        try:
            result = await self.handler(arguments)
        except ToolError as exc:
            raise ToolError(f"{prefix}: {exc}") from exc
        except Exception as exc:
            log.info("tool %s failed: %s", self.name, _error_text(exc), exc_info=exc)
            raise ToolError(f"{prefix}: {_error_text(exc)}") from exc
        return self.fn_metadata.convert_result(result) if convert_result else result


async def _no_arguments(arguments: dict[str, Any]) -> Any:  # pragma: no cover - placeholder
    return None


def _validator(schema: Mapping[str, Any]) -> Any:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@dataclass
class _Entry:
    name: str
    build: Callable[[], Tool]
    annotations: ToolAnnotations | None = field(default=None)


class ToolService:
    """A named set of tools, served over streamable HTTP or stdio.

    Add tools with :meth:`tool` (a decorator), :meth:`add_function` or
    :meth:`add_schema_tool`; then :meth:`asgi_app`, :meth:`run_stdio` or
    :meth:`mcp_server` build the SDK server once -- adding tools afterwards is a
    :class:`UsageError`.
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "0.1.0",
        description: str | None = None,
        instructions: str | None = None,
    ) -> None:
        if not name or not name.strip():
            raise UsageError("a tool service needs a name")
        self.name = name
        self.version = version
        self.description = description
        self.instructions = instructions
        self._entries: dict[str, _Entry] = {}
        self._server: MCPServer[Any] | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        #: Where ``tools/call`` latencies go (the mesh service sets its ``/metrics`` registry's).
        self.call_metrics: CallMetrics | None = None

    # ------------------------------------------------------------ adding tools

    @overload
    def tool(self, fn: F, /) -> F: ...

    @overload
    def tool(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        read_only: bool | None = None,
        idempotent: bool | None = None,
        destructive: bool | None = None,
        open_world: bool | None = None,
        structured_output: bool | None = None,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        read_only: bool | None = None,
        idempotent: bool | None = None,
        destructive: bool | None = None,
        open_world: bool | None = None,
        structured_output: bool | None = None,
    ) -> F | Callable[[F], F]:
        """Register a function as a tool: ``@svc.tool`` or ``@svc.tool(read_only=True)``."""

        def register(func: F) -> F:
            self.add_function(
                func,
                name=name,
                title=title,
                description=description,
                read_only=read_only,
                idempotent=idempotent,
                destructive=destructive,
                open_world=open_world,
                structured_output=structured_output,
            )
            return func

        return register(fn) if fn is not None else register

    def add_function(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        read_only: bool | None = None,
        idempotent: bool | None = None,
        destructive: bool | None = None,
        open_world: bool | None = None,
        structured_output: bool | None = None,
    ) -> None:
        """Register a plain (sync or async) typed function as a tool."""
        if not callable(fn):
            raise UsageError(f"tool service {self.name}: {fn!r} is not a function")
        tool_name: str = name or str(getattr(fn, "__name__", ""))
        summary, arg_docs = _split_docstring(getattr(fn, "__doc__", None))
        annotations = tool_annotations(
            title=title,
            read_only=read_only,
            idempotent=idempotent,
            destructive=destructive,
            open_world=open_world,
        )

        def build() -> Tool:
            tool = Tool.from_function(
                _guard(fn),
                name=tool_name,
                title=title,
                description=description or summary,
                annotations=annotations,
                structured_output=structured_output,
            )
            properties = tool.parameters.get("properties", {})
            for arg, text in arg_docs.items():
                prop = properties.get(arg)
                if isinstance(prop, dict) and text and "description" not in prop:
                    prop["description"] = text
            return tool

        self._add(_Entry(tool_name, build, annotations))

    def add_schema_tool(
        self,
        name: str,
        input_schema: Mapping[str, Any],
        handler: SchemaHandler,
        *,
        description: str = "",
        title: str | None = None,
        read_only: bool | None = None,
        idempotent: bool | None = None,
        destructive: bool | None = None,
        open_world: bool | None = None,
        validate: bool = True,
    ) -> None:
        """Register a tool with a hand-made JSON ``input_schema``.

        ``handler(arguments)`` is awaited with the (schema-validated) arguments and
        may return a :class:`~mcp.types.CallToolResult`, a string, or any
        JSON-serialisable value (sent as JSON text).
        """
        schema = dict(input_schema)
        schema.setdefault("type", "object")
        annotations = tool_annotations(
            title=title,
            read_only=read_only,
            idempotent=idempotent,
            destructive=destructive,
            open_world=open_world,
        )
        try:
            validator = _validator(schema) if validate else None
        except Exception as exc:
            raise UsageError(f"tool {name}: invalid input schema: {exc}") from exc

        def build() -> Tool:
            return _SchemaTool(
                fn=handler,
                handler=handler,
                validator=validator,
                name=name,
                title=title,
                description=description,
                parameters=schema,
                fn_metadata=func_metadata(_no_arguments, structured_output=False),
                is_async=True,
                annotations=annotations,
            )

        self._add(_Entry(name, build, annotations))

    def _add(self, entry: _Entry) -> None:
        if self._server is not None:
            raise UsageError(
                f"tool service {self.name}: cannot add tool {entry.name!r} "
                "after the server was built"
            )
        if not TOOL_NAME.match(entry.name):
            raise UsageError(
                f"tool service {self.name}: tool name {entry.name!r} must match "
                f"{TOOL_NAME.pattern} (letters, digits, '_' and '-', at most 64)"
            )
        if entry.name in self._entries:
            raise UsageError(f"tool service {self.name}: tool {entry.name!r} is defined twice")
        self._entries[entry.name] = entry

    async def _call_context_middleware(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Every ``tools/call``: its call context checked and activated, a span, metrics."""
        if ctx.method != "tools/call":
            return await traced_request(ctx, call_next)
        return await traced_call(ctx, call_next, self.call_metrics)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when the service shuts down (e.g. close an HTTP pool)."""
        self._closers.append(closer)

    @property
    def tool_names(self) -> list[str]:
        return list(self._entries)

    # --------------------------------------------------------------- serving

    def mcp_server(self) -> MCPServer[Any]:
        """The SDK server holding every tool (built on first use)."""
        if self._server is None:
            self._server = MCPServer(
                self.name,
                version=self.version,
                description=self.description,
                instructions=self.instructions,
                tools=[entry.build() for entry in self._entries.values()],
                middleware=[self._call_context_middleware],
                warn_on_duplicate_tools=False,
            )
            without_sdk_spans(self._server.middleware)
        return self._server

    def asgi_app(
        self,
        *,
        path: str = "/mcp",
        allowed_origins: Iterable[str] = (),
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> Starlette:
        """A Starlette app serving the tools at ``path`` over stateless streamable HTTP.

        Its lifespan runs the SDK's session manager and, on shutdown, the
        :meth:`on_close` hooks; mount it with :meth:`lifespan` when embedding.
        Requests from foreign browser origins get 403, without ``token`` 401,
        bodies over ``max_body_bytes`` 413.
        """
        server = self.mcp_server()
        app = server.streamable_http_app(
            streamable_http_path=path,
            stateless_http=True,
            json_response=True,
            max_request_body_size=max_body_bytes,
            # Origin and Host are checked by McpGuard (same rules for every endpoint).
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        app.add_middleware(McpGuard, allowed_origins=allowed_origins, token=token, paths=[path])
        app.router.lifespan_context = lambda _app: self.lifespan()
        return app

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the session manager of the built app; close resources on exit."""
        try:
            async with self.mcp_server().session_manager.run():
                yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def __aenter__(self) -> ToolService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close what the tools hold (HTTP pools...): the :meth:`on_close` hooks, once."""
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:  # pragma: no cover - best effort on shutdown
                log.exception("tool service %s: closing a resource failed", self.name)

    async def run_stdio_async(self) -> None:
        """Serve over stdin/stdout until the peer closes."""
        try:
            await self.mcp_server().run_stdio_async()
        finally:
            await self.aclose()

    def run_stdio(self) -> None:
        """Serve over stdin/stdout (blocking): ``python -m mytools``."""
        anyio.run(self.run_stdio_async)


def tool_service(
    name: str,
    functions: Sequence[Callable[..., Any]],
    *,
    version: str = "0.1.0",
    description: str | None = None,
    read_only: Iterable[str] = (),
    idempotent: Iterable[str] = (),
    destructive: Iterable[str] = (),
) -> ToolService:
    """A :class:`ToolService` from a list of functions, in one call.

    ``read_only``/``idempotent``/``destructive`` name the functions that carry
    that annotation (per-tool keywords are on :meth:`ToolService.tool`).
    """
    ro, idem, destr = set(read_only), set(idempotent), set(destructive)
    svc = ToolService(name, version=version, description=description)
    for fn in functions:
        fname = getattr(fn, "__name__", "")
        svc.add_function(
            fn,
            read_only=True if fname in ro else None,
            idempotent=True if fname in idem else None,
            destructive=True if fname in destr else None,
        )
    unknown = (ro | idem | destr) - set(svc.tool_names)
    if unknown:
        raise UsageError(f"tool service {name}: no function named {', '.join(sorted(unknown))}")
    return svc
