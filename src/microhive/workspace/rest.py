"""The workspace REST API (Starlette routes) and its OpenAPI document.

Files travel as raw bodies (``PUT`` the bytes, ``GET`` them back), so any HTTP
client can use it; metadata comes back as JSON and in ``ETag`` headers.
Preconditions use the usual HTTP headers: ``If-Match: "3"`` (or ``If-Match: 3``)
for an expected version, ``If-None-Match: *`` for "create only",
``Idempotency-Key`` for safe retries.

A request may carry a scoped workspace token in ``Microhive-Workspace-Token``
(configured under ``settings.tokens``): it limits the caller to some folders
and/or to reading. Without it the caller has the service's full access (the mesh
bearer token, when set, has already been checked by the service runtime).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from microhive.errors import InvalidInput
from microhive.service import json_error
from microhive.workspace.core import Workspace
from microhive.workspace.model import FULL_ACCESS, FileInfo, Grant, PermissionDenied

__all__ = ["OPENAPI_PATH", "grants_from_settings", "openapi_document", "rest_routes"]

OPENAPI_PATH = "/openapi.json"
TOKEN_HEADER = "microhive-workspace-token"
Endpoint = Callable[[Request], Awaitable[Response]]


def grants_from_settings(tokens: list[dict[str, Any]]) -> list[tuple[str, Grant]]:
    """``[{token_env: NAME, folders: [...], read_only: bool}]`` -> (token, grant) pairs."""
    out = []
    for entry in tokens:
        env = entry.get("token_env")
        if not env or os.environ.get(env) is None:
            raise InvalidInput(f"workspace token entry {entry!r}: environment variable not set")
        folders = tuple(str(f).strip("/") for f in entry.get("folders", ()))
        out.append(
            (os.environ[env], Grant(folders=folders, read_only=bool(entry.get("read_only"))))
        )
    return out


def _int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value.strip().strip('"').removeprefix("W/").strip('"'))
    except ValueError:
        raise InvalidInput(f"{name} must be an integer version, got {value!r}") from None


def _info_response(info: FileInfo, status: int = 200) -> JSONResponse:
    return JSONResponse(info.to_dict(), status_code=status, headers={"etag": info.etag})


def rest_routes(ws: Workspace, grants: list[tuple[str, Grant]] | None = None) -> list[BaseRoute]:
    """Every REST route of the workspace, bound to one :class:`Workspace`."""
    scoped = grants or []

    def grant_of(request: Request) -> Grant:
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            return FULL_ACCESS
        for known, grant in scoped:
            if hmac.compare_digest(known.encode(), token.encode()):
                return grant
        raise PermissionDenied("unknown workspace token")

    def endpoint(fn: Callable[[Request, Grant], Awaitable[Response]]) -> Endpoint:
        async def handle(request: Request) -> Response:
            try:
                return await fn(request, grant_of(request))
            except PermissionDenied as exc:
                return json_error(403, exc.code, exc.message)

        handle.__name__ = fn.__name__
        return handle

    def author(request: Request) -> str | None:
        return request.headers.get("microhive-author") or request.query_params.get("author")

    async def workspaces(request: Request, grant: Grant) -> Response:
        return JSONResponse({"workspaces": await ws.workspaces()})

    async def list_files(request: Request, grant: Grant) -> Response:
        q = request.query_params
        page = await ws.list(
            q.get("folder", ""),
            workspace=request.path_params["ws"],
            glob=q.get("glob"),
            recursive=q.get("recursive", "true").lower() not in ("0", "false", "no"),
            limit=_int(q.get("limit"), "limit") or 100,
            cursor=q.get("cursor"),
            grant=grant,
        )
        return JSONResponse(page.to_dict())

    async def get_file(request: Request, grant: Grant) -> Response:
        p = request.path_params
        version = _int(request.query_params.get("version"), "version")
        info, data = await ws.read(p["path"], workspace=p["ws"], version=version, grant=grant)
        return Response(
            data,
            media_type=info.content_type,
            headers={"etag": info.etag, "microhive-version": str(info.version)},
        )

    async def put_file(request: Request, grant: Grant) -> Response:
        p, h, q = request.path_params, request.headers, request.query_params
        expected = _int(h.get("if-match"), "If-Match")
        if h.get("if-none-match") == "*":
            expected = 0
        ctype = h.get("content-type")
        if ctype in (None, "", "application/octet-stream"):
            ctype = None
        info = await ws.write(
            p["path"],
            await request.body(),
            workspace=p["ws"],
            content_type=ctype,
            expected_version=expected,
            idempotency_key=h.get("idempotency-key"),
            author=author(request),
            append=q.get("append", "").lower() in ("1", "true", "yes"),
            grant=grant,
        )
        return _info_response(info, 201 if info.version == 1 else 200)

    async def delete_file(request: Request, grant: Grant) -> Response:
        p = request.path_params
        info = await ws.delete(
            p["path"],
            workspace=p["ws"],
            grant=grant,
            author=author(request),
            expected_version=_int(request.headers.get("if-match"), "If-Match"),
        )
        return _info_response(info)

    async def info(request: Request, grant: Grant) -> Response:
        p = request.path_params
        version = _int(request.query_params.get("version"), "version")
        return _info_response(
            await ws.info(p["path"], workspace=p["ws"], version=version, grant=grant)
        )

    async def versions(request: Request, grant: Grant) -> Response:
        p = request.path_params
        items = await ws.versions(p["path"], workspace=p["ws"], grant=grant)
        return JSONResponse({"versions": [v.to_dict() for v in items]})

    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidInput("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        return body

    async def restore(request: Request, grant: Grant) -> Response:
        p, body = request.path_params, await _json(request)
        version = _int(str(body.get("version", "")), "version")
        if version is None:
            raise InvalidInput("body needs 'version'")
        return _info_response(
            await ws.restore(
                p["path"], version, workspace=p["ws"], author=author(request), grant=grant
            )
        )

    async def move(request: Request, grant: Grant) -> Response:
        body = await _json(request)
        src, dst = str(body.get("from", "")), str(body.get("to", ""))
        return _info_response(
            await ws.move(
                src, dst, workspace=request.path_params["ws"], author=author(request), grant=grant
            )
        )

    async def copy(request: Request, grant: Grant) -> Response:
        body = await _json(request)
        src, dst = str(body.get("from", "")), str(body.get("to", ""))
        return _info_response(
            await ws.copy(
                src, dst, workspace=request.path_params["ws"], author=author(request), grant=grant
            )
        )

    async def mkdir(request: Request, grant: Grant) -> Response:
        body = await _json(request)
        folder = await ws.mkdir(
            str(body.get("path", "")), workspace=request.path_params["ws"], grant=grant
        )
        return JSONResponse({"folder": folder}, status_code=201)

    async def search(request: Request, grant: Grant) -> Response:
        q = request.query_params
        hits = await ws.search(
            q.get("q", ""),
            workspace=request.path_params["ws"],
            folder=q.get("folder"),
            content_types=q.getlist("type") or None,
            limit=_int(q.get("limit"), "limit") or 10,
            mode=q.get("mode", "hybrid"),
            grant=grant,
        )
        return JSONResponse({"hits": [h.to_dict() for h in hits]})

    # -------------------------------------------------------------- webhooks
    def admin(grant: Grant) -> None:
        if grant is not FULL_ACCESS:
            raise PermissionDenied("webhooks need the service's full access, not a scoped token")

    async def hooks(request: Request, grant: Grant) -> Response:
        admin(grant)
        if request.method == "GET":
            return JSONResponse(
                {"webhooks": [h.to_dict() for h in await ws.webhooks.subscriptions()]}
            )
        body = await _json(request)
        events = body.get("events") or ["file.*"]
        if not isinstance(events, list):
            raise InvalidInput("'events' must be a list of event types")
        hook, secret = await ws.webhooks.add(
            str(body.get("url", "")),
            [str(e) for e in events],
            folder=str(body.get("folder", "")),
            workspace=body.get("workspace"),
        )
        return JSONResponse({**hook.to_dict(), "secret": secret}, status_code=201)

    async def hook(request: Request, grant: Grant) -> Response:
        admin(grant)
        hook_id = request.path_params["id"]
        if request.method == "DELETE":
            await ws.webhooks.remove(hook_id)
            return JSONResponse({"deleted": hook_id})
        return JSONResponse((await ws.webhooks.get(hook_id)).to_dict())

    async def hook_action(request: Request, grant: Grant) -> Response:
        admin(grant)
        hook_id, action = request.path_params["id"], request.path_params["action"]
        if action == "rotate":
            return JSONResponse({"id": hook_id, "secret": await ws.webhooks.rotate(hook_id)})
        if action == "test":
            return JSONResponse({"delivery": await ws.webhooks.test(hook_id)}, status_code=202)
        if action == "enable":
            await ws.webhooks.enable(hook_id)
            return JSONResponse((await ws.webhooks.get(hook_id)).to_dict())
        if action == "deliveries":
            return JSONResponse({"deliveries": await ws.webhooks.deliveries(hook_id)})
        raise InvalidInput(f"unknown webhook action {action!r}")

    async def redeliver(request: Request, grant: Grant) -> Response:
        admin(grant)
        did = _int(request.path_params["id"], "delivery id")
        await ws.webhooks.redeliver(did or 0)
        return JSONResponse({"delivery": did, "status": "pending"}, status_code=202)

    async def openapi(request: Request, grant: Grant) -> Response:
        return JSONResponse(openapi_document())

    f = "/v1/ws/{ws}"
    return [
        Route(OPENAPI_PATH, endpoint(openapi), methods=["GET"]),
        Route("/v1/workspaces", endpoint(workspaces), methods=["GET"]),
        Route(f"{f}/files", endpoint(list_files), methods=["GET"]),
        Route(f"{f}/files/{{path:path}}", endpoint(get_file), methods=["GET"]),
        Route(f"{f}/files/{{path:path}}", endpoint(put_file), methods=["PUT"]),
        Route(f"{f}/files/{{path:path}}", endpoint(delete_file), methods=["DELETE"]),
        Route(f"{f}/info/{{path:path}}", endpoint(info), methods=["GET"]),
        Route(f"{f}/versions/{{path:path}}", endpoint(versions), methods=["GET"]),
        Route(f"{f}/restore/{{path:path}}", endpoint(restore), methods=["POST"]),
        Route(f"{f}/move", endpoint(move), methods=["POST"]),
        Route(f"{f}/copy", endpoint(copy), methods=["POST"]),
        Route(f"{f}/folders", endpoint(mkdir), methods=["POST"]),
        Route(f"{f}/search", endpoint(search), methods=["GET"]),
        Route("/v1/webhooks", endpoint(hooks), methods=["GET", "POST"]),
        Route("/v1/webhooks/{id}", endpoint(hook), methods=["GET", "DELETE"]),
        Route("/v1/webhooks/{id}/{action}", endpoint(hook_action), methods=["GET", "POST"]),
        Route("/v1/deliveries/{id}/redeliver", endpoint(redeliver), methods=["POST"]),
    ]


def _op(
    summary: str,
    *,
    params: tuple[str, ...] | list[str] = (),
    body: str | None = None,
    ok: str = "application/json",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [
            {
                "name": n.lstrip("?"),
                "in": "query" if n.startswith("?") else "path",
                "required": not n.startswith("?"),
                "schema": {"type": "string"},
            }
            for n in params
        ],
        "responses": {
            "200": {"description": "OK", "content": {ok: {}}},
            "default": {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    if body:
        op["requestBody"] = {"required": True, "content": {body: {}}}
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of :func:`rest_routes`."""
    f = "/v1/ws/{ws}"
    paths: dict[str, Any] = {
        "/v1/workspaces": {"get": _op("List workspaces")},
        f"{f}/files": {
            "get": _op(
                "List files", params=["ws", "?folder", "?glob", "?recursive", "?limit", "?cursor"]
            )
        },
        f"{f}/files/{{path}}": {
            "get": _op("Read a file (raw bytes)", params=["ws", "path", "?version"], ok="*/*"),
            "put": _op(
                "Write a file (If-Match, If-None-Match, Idempotency-Key headers)",
                params=["ws", "path", "?append", "?author"],
                body="*/*",
            ),
            "delete": _op("Delete a file (If-Match)", params=["ws", "path"]),
        },
        f"{f}/info/{{path}}": {"get": _op("File metadata", params=["ws", "path", "?version"])},
        f"{f}/versions/{{path}}": {"get": _op("Version history", params=["ws", "path"])},
        f"{f}/restore/{{path}}": {
            "post": _op(
                "Restore an old version ({version})", params=["ws", "path"], body="application/json"
            )
        },
        f"{f}/move": {"post": _op("Move {from, to}", params=["ws"], body="application/json")},
        f"{f}/copy": {"post": _op("Copy {from, to}", params=["ws"], body="application/json")},
        f"{f}/folders": {
            "post": _op("Create a folder {path}", params=["ws"], body="application/json")
        },
        f"{f}/search": {
            "get": _op("Hybrid search", params=["ws", "q", "?folder", "?type", "?limit", "?mode"])
        },
        "/v1/webhooks": {
            "get": _op("List webhooks"),
            "post": _op(
                "Add a webhook {url, events, folder}; the secret is shown once",
                body="application/json",
            ),
        },
        "/v1/webhooks/{id}": {
            "get": _op("One webhook", params=["id"]),
            "delete": _op("Remove a webhook", params=["id"]),
        },
        "/v1/webhooks/{id}/{action}": {
            "post": _op("rotate | test | enable | deliveries", params=["id", "action"])
        },
        "/v1/deliveries/{id}/redeliver": {"post": _op("Deliver again", params=["id"])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "microhive workspace", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                }
            }
        },
    }
