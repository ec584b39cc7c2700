"""A REST service with an OpenAPI 3.x document, served as MCP tools with no per-endpoint code.

::

    tools = OpenApiTools.from_url("http://127.0.0.1:8200/openapi.json")
    svc = tools.tool_service("calculator")        # one MCP tool per operation

Each operation becomes one tool:

* **name** -- the ``operationId``, else ``<method>_<path>``, sanitised to
  ``^[a-zA-Z0-9_-]{1,64}$`` (other characters become ``_``; a long or clashing
  name is shortened and given a short hash suffix);
* **description** -- the summary and description;
* **input schema** -- path, query and header parameters plus the JSON request
  body, in one object. The body's properties are lifted to the top level when
  they do not clash with a parameter name (``add(a, b)`` rather than
  ``add(body={...})``); otherwise, or when the body is not an object, it is the
  ``body`` argument. Local ``$ref`` s are inlined; OpenAPI 3.0 ``nullable`` becomes a
  JSON Schema type union;
* **annotations** -- from the HTTP method (GET/HEAD read-only and idempotent,
  PUT idempotent, DELETE idempotent and destructive), overridable per operation
  with an ``x-mcp-annotations`` object (``readOnlyHint`` ...).

A call is one HTTP request through a pooled :class:`httpx.AsyncClient`, carrying
the call context's headers (trace, hops, deadline). A 2xx JSON answer is the
tool's structured result; 4xx/5xx answers, timeouts and connection failures are
tool errors that say what happened (status, reason, an excerpt of the body).

The base URL is operator configuration (usually a service of the same mesh), so
it is not subject to the outbound SSRF policy.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import yaml
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent

from microhive.context import CallContext
from microhive.errors import ConfigError, ServiceUnavailable
from microhive.tracing import client_span

if TYPE_CHECKING:
    from microhive.mcp.server import ToolService
    from microhive.service import Service, ServiceContext

__all__ = ["OpenApiTools", "Operation", "load_spec", "openapi_tools", "sanitize_tool_name"]

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_INVALID = re.compile(r"[^a-zA-Z0-9_-]+")
_DROP_KEYS = frozenset(
    {"example", "examples", "xml", "externalDocs", "discriminator", "deprecated"}
)
_MAX_REF_DEPTH = 12
_EXCERPT = 500


def sanitize_tool_name(raw: str, taken: Iterable[str] = ()) -> str:
    """A tool name valid for every big LLM API, unique among ``taken``."""
    name = re.sub(r"__+", "_", _INVALID.sub("_", raw)).strip("_") or "operation"
    used = set(taken)
    if len(name) <= 64 and name not in used:
        return name
    digest = hashlib.sha1(raw.encode()).hexdigest()
    for size in (6, 10, 16, 40):
        candidate = f"{name[: 63 - size]}_{digest[:size]}"
        if candidate not in used:
            return candidate
    raise ConfigError(f"cannot make a unique tool name for {raw!r}")  # pragma: no cover


def load_spec(source: str | Path | Mapping[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Read an OpenAPI document from a dict, a file, JSON/YAML text or an http(s) URL."""
    if isinstance(source, Mapping):
        spec = dict(source)
    else:
        text: str
        where = str(source)
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            try:
                response = httpx.get(source, timeout=timeout, trust_env=False)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise ServiceUnavailable(
                    f"cannot fetch the OpenAPI document {where}: {exc}"
                ) from exc
            text = response.text
        elif isinstance(source, Path) or not source.lstrip().startswith(("{", "openapi")):
            try:
                text = Path(source).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read the OpenAPI document {where}: {exc}") from exc
        else:
            text, where = source, "<text>"
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid JSON or YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: an OpenAPI document must be an object")
        spec = loaded
    version = str(spec.get("openapi", ""))
    if not version.startswith("3."):
        raise ConfigError(f"expected an OpenAPI 3.x document, got openapi={version or 'missing'!r}")
    if not isinstance(spec.get("paths"), dict):
        raise ConfigError("the OpenAPI document has no 'paths' object")
    return spec


class _Resolver:
    """Inlines local ``$ref`` s (``#/components/...``), converting OpenAPI-isms to JSON Schema."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    def lookup(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise ConfigError(f"only local $refs are supported, got {ref!r}")
        node: Any = self.spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"$ref {ref!r} points at nothing")
            node = node[part]
        return node

    def deref(self, node: Any) -> Any:
        """One level: follow ``$ref`` chains of a parameter or body object."""
        seen: set[str] = set()
        while isinstance(node, Mapping) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise ConfigError(f"$ref cycle at {ref!r}")
            seen.add(ref)
            node = self.lookup(ref)
        return node

    def schema(self, node: Any, depth: int = 0, stack: tuple[str, ...] = ()) -> Any:
        if isinstance(node, list):
            return [self.schema(item, depth, stack) for item in node]
        if not isinstance(node, Mapping):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            if ref in stack or depth > _MAX_REF_DEPTH:
                return {"type": "object", "description": f"(recursive: {ref.rsplit('/', 1)[-1]})"}
            return self.schema(self.lookup(ref), depth + 1, (*stack, ref))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP_KEYS or key.startswith("x-"):
                continue
            out[key] = self.schema(value, depth, stack) if key != "enum" else value
        if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out


@dataclass(frozen=True, slots=True)
class Operation:
    """One OpenAPI operation as a tool: where each argument goes in the request."""

    name: str
    method: str
    path: str
    description: str
    input_schema: dict[str, Any]
    path_params: tuple[str, ...] = ()
    query_params: tuple[str, ...] = ()
    header_params: dict[str, str] = field(default_factory=dict)  # argument -> header name
    body_fields: tuple[str, ...] = ()  # lifted body properties
    body_argument: str | None = None  # the whole body under this argument
    annotations: dict[str, bool] = field(default_factory=dict)


def _annotations(method: str, op: Mapping[str, Any]) -> dict[str, bool]:
    defaults: dict[str, dict[str, bool]] = {
        "get": {"read_only": True, "idempotent": True},
        "head": {"read_only": True, "idempotent": True},
        "options": {"read_only": True, "idempotent": True},
        "put": {"idempotent": True},
        "delete": {"idempotent": True, "destructive": True},
    }
    result = dict(defaults.get(method, {}))
    extension = op.get("x-mcp-annotations")
    if isinstance(extension, Mapping):
        names = {
            "readOnlyHint": "read_only",
            "idempotentHint": "idempotent",
            "destructiveHint": "destructive",
            "openWorldHint": "open_world",
        }
        for key, value in extension.items():
            if key in names and isinstance(value, bool):
                result[names[key]] = value
    return result


def _operations(spec: Mapping[str, Any]) -> list[Operation]:
    resolver = _Resolver(spec)
    ops: list[Operation] = []
    taken: set[str] = set()
    for path, item in spec["paths"].items():
        item = resolver.deref(item)
        if not isinstance(item, Mapping):
            continue
        shared = item.get("parameters", [])
        for method in _METHODS:
            op = item.get(method)
            if not isinstance(op, Mapping):
                continue
            raw_name = op.get("operationId") or f"{method}_{path}"
            name = sanitize_tool_name(str(raw_name), taken)
            taken.add(name)
            ops.append(_operation(resolver, name, method, path, op, shared))
    return ops


def _operation(
    resolver: _Resolver,
    name: str,
    method: str,
    path: str,
    op: Mapping[str, Any],
    shared: list[Any],
) -> Operation:
    params: dict[tuple[str, str], Mapping[str, Any]] = {}
    for raw in [*shared, *op.get("parameters", [])]:
        param = resolver.deref(raw)
        if isinstance(param, Mapping) and "name" in param and "in" in param:
            params[(str(param["name"]), str(param["in"]))] = param
    properties: dict[str, Any] = {}
    required: list[str] = []
    path_params: list[str] = []
    query_params: list[str] = []
    header_params: dict[str, str] = {}
    for (pname, where), param in params.items():
        if where == "cookie":
            continue
        schema = resolver.schema(param.get("schema") or {"type": "string"})
        if param.get("description") and isinstance(schema, dict):
            schema = {**schema, "description": param["description"]}
        arg = pname if where != "header" else re.sub(r"\W+", "_", pname).strip("_").lower()
        properties[arg] = schema
        if where == "path" or param.get("required"):
            required.append(arg)
        if where == "path":
            path_params.append(arg)
        elif where == "query":
            query_params.append(arg)
        elif where == "header":
            header_params[arg] = pname
    body_fields: tuple[str, ...] = ()
    body_argument: str | None = None
    body = resolver.deref(op.get("requestBody")) if op.get("requestBody") else None
    if isinstance(body, Mapping):
        content = body.get("content") or {}
        media = next((m for m in content if m.split(";")[0].strip().endswith("json")), None)
        if media is not None:
            schema = resolver.schema((content[media] or {}).get("schema") or {})
            props = schema.get("properties") if isinstance(schema, dict) else None
            liftable = (
                isinstance(props, dict)
                and schema.get("type", "object") == "object"
                and not set(props) & set(properties)
                and not schema.get("additionalProperties")
            )
            if liftable and isinstance(props, dict):
                properties.update(props)
                body_fields = tuple(props)
                required += [r for r in schema.get("required", []) if r in props]
            else:
                body_argument = "body" if "body" not in properties else "request_body"
                properties[body_argument] = schema
                if body.get("required"):
                    required.append(body_argument)
    input_schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        input_schema["required"] = sorted(set(required), key=required.index)
    summary = str(op.get("summary") or "").strip()
    detail = str(op.get("description") or "").strip()
    description = "\n\n".join(p for p in (summary, detail) if p) or f"{method.upper()} {path}"
    return Operation(
        name=name,
        method=method.upper(),
        path=path,
        description=description,
        input_schema=input_schema,
        path_params=tuple(path_params),
        query_params=tuple(query_params),
        header_params=header_params,
        body_fields=body_fields,
        body_argument=body_argument,
        annotations=_annotations(method, op),
    )


class OpenApiTools:
    """The operations of one OpenAPI document and a pooled client to call them.

    Owns an HTTP connection pool: use as an async context manager or call
    :meth:`aclose` (a :class:`ToolService` built by :meth:`tool_service` closes
    it on shutdown).
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        base_url: str | None = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        include: Iterable[str] | None = None,
        spec_url: str | None = None,
    ) -> None:
        self.spec = load_spec(spec)
        self.base_url = _base_url(self.spec, base_url, spec_url)
        self.timeout = timeout
        wanted = set(include) if include is not None else None
        self.operations = [
            op for op in _operations(self.spec) if wanted is None or op.name in wanted
        ]
        if not self.operations:
            raise ConfigError("the OpenAPI document has no operations to serve as tools")
        self._headers = dict(headers or {})
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_url(cls, url: str, base_url: str | None = None, **kwargs: Any) -> OpenApiTools:
        """Fetch the document at ``url`` (synchronously, at start-up)."""
        return cls(load_spec(url), base_url, spec_url=url, **kwargs)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeout,
                trust_env=False,
                headers=self._headers,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
        return self._client

    async def __aenter__(self) -> OpenApiTools:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def operation(self, name: str) -> Operation:
        for op in self.operations:
            if op.name == name:
                return op
        raise ToolError(f"no operation named {name!r}")

    async def call(self, name: str, arguments: Mapping[str, Any]) -> CallToolResult:
        """Perform one operation; non-2xx answers and transport failures raise ToolError."""
        op = self.operation(name)
        path = op.path
        for arg in op.path_params:
            path = path.replace("{" + arg + "}", quote(str(arguments[arg]), safe=""))
        query = {a: _query_value(arguments[a]) for a in op.query_params if a in arguments}
        headers = CallContext.current().next_hop().to_headers()
        for arg, header in op.header_params.items():
            if arg in arguments:
                headers[header] = str(arguments[arg])
        body: Any = None
        if op.body_argument is not None and op.body_argument in arguments:
            body = arguments[op.body_argument]
        elif op.body_fields:
            body = {f: arguments[f] for f in op.body_fields if f in arguments}
        timeout = self.timeout
        remaining = CallContext.current().remaining()
        if remaining is not None:
            timeout = max(0.001, min(timeout, remaining))
        started = time.monotonic()
        # A client span: the upstream's server span (if it traces) becomes its child.
        # Its URL is the path template: argument values are content, not span data.
        with client_span(op.method, self.base_url + op.path, headers=headers) as span:
            try:
                response = await self._http().request(
                    op.method,
                    path,
                    params=query or None,
                    headers=headers,
                    json=body if (op.body_fields or op.body_argument) else None,
                    timeout=timeout,
                )
            except httpx.TimeoutException:
                raise ToolError(
                    f"{op.method} {op.path} timed out after {time.monotonic() - started:.1f}s"
                ) from None
            except httpx.HTTPError as exc:
                raise ToolError(
                    f"{op.method} {op.path}: cannot reach {self.base_url}: "
                    f"{exc or type(exc).__name__}"
                ) from None
            span.http_status(response.status_code)
        return _result(op, response)

    def add_to(self, svc: ToolService) -> None:
        """Register every operation as a tool of ``svc``."""
        for op in self.operations:

            async def handler(arguments: dict[str, Any], _name: str = op.name) -> CallToolResult:
                return await self.call(_name, arguments)

            svc.add_schema_tool(
                op.name,
                op.input_schema,
                handler,
                description=op.description,
                read_only=op.annotations.get("read_only"),
                idempotent=op.annotations.get("idempotent"),
                destructive=op.annotations.get("destructive"),
                open_world=op.annotations.get("open_world"),
            )
        svc.on_close(self.aclose)

    def tool_service(self, name: str, *, version: str | None = None) -> ToolService:
        """A :class:`ToolService` serving every operation."""
        from microhive.mcp.server import ToolService

        info = self.spec.get("info") or {}
        svc = ToolService(
            name,
            version=version or str(info.get("version") or "0.1.0"),
            description=str(info.get("description") or info.get("title") or "") or None,
        )
        self.add_to(svc)
        return svc


def openapi_tools(
    spec_or_url: str | Path | Mapping[str, Any],
    base_url: str | None = None,
    *,
    name: str = "openapi",
    timeout: float = 30.0,
    headers: Mapping[str, str] | None = None,
    include: Iterable[str] | None = None,
) -> ToolService:
    """One call: an OpenAPI document (dict, file, text or URL) -> an MCP tool service."""
    spec_url = spec_or_url if isinstance(spec_or_url, str) and "://" in spec_or_url else None
    tools = OpenApiTools(
        load_spec(spec_or_url),
        base_url,
        timeout=timeout,
        headers=headers,
        include=include,
        spec_url=spec_url,
    )
    return tools.tool_service(name)


def _base_url(spec: Mapping[str, Any], base_url: str | None, spec_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/")
    servers = spec.get("servers") or []
    server_url = servers[0].get("url") if servers and isinstance(servers[0], Mapping) else None
    if spec_url is not None:
        return str(httpx.URL(spec_url).join(server_url or "/")).rstrip("/")
    if server_url and "://" in server_url:
        return str(server_url).rstrip("/")
    raise ConfigError("no base_url given and the OpenAPI document names no absolute server URL")


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return [_query_value(v) for v in value]
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _result(op: Operation, response: httpx.Response) -> CallToolResult:
    text = response.text
    if response.status_code >= 400:
        excerpt = text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")
        raise ToolError(
            f"{op.method} {op.path} answered HTTP {response.status_code} "
            f"{response.reason_phrase}: {excerpt}"
        )
    structured: dict[str, Any] | None = None
    if "json" in response.headers.get("content-type", "") and text:
        try:
            data = response.json()
        except ValueError:
            data = None
        structured = data if isinstance(data, dict) else {"result": data}
        text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(
        content=[TextContent(type="text", text=text or f"HTTP {response.status_code}")],
        structured_content=structured,
    )


# ------------------------------------------------------------------ mesh service


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``openapi-tools``: settings ``openapi_url`` (or ``upstream``), ``base_url``.

    ``upstream: <service>`` names a service of the same mesh: the document is read
    from its ``/openapi.json`` and calls go to it. Optional: ``timeout`` (s),
    ``include`` (operation names), ``name`` (the MCP server name).
    """
    from microhive.mcp.services import mesh_service, upstream_url

    settings = ctx.spec.settings
    openapi_url = settings.get("openapi_url")
    base_url = settings.get("base_url")
    upstream = settings.get("upstream")
    if upstream:
        root = upstream_url(ctx, str(upstream))
        openapi_url = openapi_url or f"{root}/openapi.json"
        base_url = base_url or root
    if not openapi_url:
        raise ConfigError(
            f"service {ctx.name!r} (kind openapi-tools) needs settings.openapi_url "
            "or settings.upstream"
        )
    tools = OpenApiTools(
        _fetch_with_retry(str(openapi_url), ctx.spec.startup_timeout),
        base_url,
        timeout=float(settings.get("timeout", 30.0)),
        include=settings.get("include"),
        spec_url=str(openapi_url),
    )
    svc = tools.tool_service(str(settings.get("name") or ctx.name))
    return mesh_service(svc, ctx)


def _fetch_with_retry(url: str, timeout: float) -> dict[str, Any]:
    """The upstream may still be starting: retry until its document can be read."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return load_spec(url, timeout=min(10.0, timeout))
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
