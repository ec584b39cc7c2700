"""A small synchronous HTTP client for the workspace REST API (used by the CLI)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from microhive.errors import (
    Conflict,
    InvalidInput,
    MicrohiveError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
)
from microhive.workspace.model import PermissionDenied

__all__ = ["WorkspaceClient", "find_workspace_url"]

_ERRORS: dict[int, type[MicrohiveError]] = {
    400: InvalidInput,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
}


def find_workspace_url(mesh_file: Path, service: str | None = None) -> tuple[str, str | None]:
    """The URL of a mesh's workspace service and the mesh token (``None`` if unset)."""
    from microhive.config import load_config
    from microhive.service import STATE_DIR, mesh_token, service_url

    mesh = load_config(mesh_file)
    url = service_url(mesh, kind="workspace", name=service, state_dir=mesh_file.parent / STATE_DIR)
    return url, mesh_token(mesh)


class WorkspaceClient:
    """REST calls with our errors: 404 -> NotFound, 409 -> Conflict, ..."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        workspace: str = "default",
        timeout: float = 60.0,
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.workspace = workspace
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WorkspaceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"workspace at {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise _ERRORS.get(response.status_code, UpstreamError)(message)
        return response

    def _files(self, path: str) -> str:
        return f"/v1/ws/{self.workspace}/files/{path.lstrip('/')}"

    def list_files(
        self,
        folder: str = "",
        *,
        glob: str | None = None,
        recursive: bool = True,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "folder": folder,
            "recursive": str(recursive).lower(),
            "limit": limit,
        }
        if glob:
            params["glob"] = glob
        if cursor:
            params["cursor"] = cursor
        data: dict[str, Any] = self._call(
            "GET", f"/v1/ws/{self.workspace}/files", params=params
        ).json()
        return data

    def read(self, path: str, version: int | None = None) -> bytes:
        params = {"version": version} if version is not None else {}
        return self._call("GET", self._files(path), params=params).content

    def write(
        self,
        path: str,
        data: bytes,
        *,
        expected_version: int | None = None,
        content_type: str | None = None,
        author: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        headers = {"content-length": str(len(data))}
        if expected_version is not None:
            headers["if-match"] = f'"{expected_version}"'
        if content_type:
            headers["content-type"] = content_type
        if author:
            headers["microhive-author"] = author

        def chunks() -> Iterator[bytes]:
            step = 256 * 1024
            for start in range(0, len(data), step):
                piece = data[start : start + step]
                yield piece
                if progress is not None:
                    progress(len(piece))

        body: Any = chunks() if progress is not None else data
        result: dict[str, Any] = self._call(
            "PUT", self._files(path), content=body, headers=headers
        ).json()
        return result

    def delete(self, path: str, *, expected_version: int | None = None) -> dict[str, Any]:
        headers = {"if-match": str(expected_version)} if expected_version is not None else {}
        result: dict[str, Any] = self._call("DELETE", self._files(path), headers=headers).json()
        return result

    def versions(self, path: str) -> list[dict[str, Any]]:
        url = f"/v1/ws/{self.workspace}/versions/{path.lstrip('/')}"
        items: list[dict[str, Any]] = self._call("GET", url).json()["versions"]
        return items

    def search(
        self,
        query: str,
        *,
        folder: str | None = None,
        limit: int = 10,
        mode: str = "hybrid",
        types: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"q": query, "limit": limit, "mode": mode}
        if folder:
            params["folder"] = folder
        if types:
            params["type"] = types
        hits: list[dict[str, Any]] = self._call(
            "GET", f"/v1/ws/{self.workspace}/search", params=params
        ).json()["hits"]
        return hits

    def webhooks(self) -> list[dict[str, Any]]:
        hooks: list[dict[str, Any]] = self._call("GET", "/v1/webhooks").json()["webhooks"]
        return hooks

    def add_webhook(self, url: str, events: list[str], folder: str = "") -> dict[str, Any]:
        body = {"url": url, "events": events, "folder": folder}
        made: dict[str, Any] = self._call("POST", "/v1/webhooks", json=body).json()
        return made

    def webhook_action(self, hook_id: str, action: str) -> dict[str, Any]:
        method = "GET" if action == "deliveries" else "POST"
        result: dict[str, Any] = self._call(method, f"/v1/webhooks/{hook_id}/{action}").json()
        return result

    def remove_webhook(self, hook_id: str) -> None:
        self._call("DELETE", f"/v1/webhooks/{hook_id}")

    def redeliver(self, delivery_id: int) -> None:
        self._call("POST", f"/v1/deliveries/{delivery_id}/redeliver")
