"""Model providers behind one small interface.

:class:`ModelProvider` is the interface (``chat`` with messages and tools,
returning a :class:`ChatResult`; ``aclose``). :func:`open_model` builds one from a
mesh file's :class:`~microhive.config.ModelSpec`, loading the provider lazily:

============  =========================================================  ==============
provider      what                                                       needs
============  =========================================================  ==============
offline       deterministic planner, tool-using agent and extractive     nothing
              writer; output labelled offline (the default)
openai        any OpenAI-compatible ``/chat/completions`` server         ``models`` extra
              (OpenAI, vLLM, Ollama, LM Studio, ...) via ``base_url``    and a key
anthropic     Anthropic's Messages API                                   ``models`` extra
                                                                         and a key
scripted      replays a script file (JSON/YAML) named by ``model``       nothing
============  =========================================================  ==============

Keys come from the environment variable named by ``api_key_env`` (default
``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``); ``base_url`` falls back to
``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``. Keys never live in the mesh file.
A model with ``service: NAME`` is served by the mesh's own ``model-server``
service NAME: its URL comes from the mesh, and the only credential sent is the
mesh's service token (when auth is on), never a vendor key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from microhive.config import MeshConfig, ModelSpec
from microhive.errors import ConfigError, MissingDependency, UsageError
from microhive.models.base import ModelProvider
from microhive.models.offline.brief import OFFLINE_NOTE
from microhive.models.prompts import (
    PLAN_SCHEMA,
    extract_json,
    planning_messages,
    task_messages,
)
from microhive.models.scripted import Reply, ScriptedModel
from microhive.models.toolcalls import recover_tool_calls
from microhive.models.types import (
    AssistantMessage,
    ChatHooks,
    ChatRequest,
    ChatResult,
    FinishReason,
    Message,
    ResponseSchema,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    ToolSpec,
    Usage,
    UserMessage,
    count_tokens,
    message_from_dict,
    message_to_dict,
)

__all__ = [
    "OFFLINE_NOTE",
    "PLAN_SCHEMA",
    "AssistantMessage",
    "ChatHooks",
    "ChatRequest",
    "ChatResult",
    "FinishReason",
    "Message",
    "ModelProvider",
    "Reply",
    "ResponseSchema",
    "ScriptedModel",
    "SystemMessage",
    "ToolCall",
    "ToolResultMessage",
    "ToolSpec",
    "Usage",
    "UserMessage",
    "available_providers",
    "count_tokens",
    "extract_json",
    "message_from_dict",
    "message_to_dict",
    "open_model",
    "planning_messages",
    "recover_tool_calls",
    "task_messages",
]

Env = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a model entry's mesh lives, to resolve ``service:`` (None: no mesh)."""

    mesh: MeshConfig | None = None
    state_dir: Path | None = None


def _offline(spec: ModelSpec, env: Env, where: _Where) -> ModelProvider:
    from microhive.models.offline import OfflineModel

    return OfflineModel(spec.model)


def _scripted(spec: ModelSpec, env: Env, where: _Where) -> ModelProvider:
    return ScriptedModel.from_file(spec.model)


def _key(spec: ModelSpec, env: Env, default_env: str, provider: str) -> tuple[str, str]:
    name = spec.api_key_env or default_env
    key = env.get(name, "").strip()
    if not key:
        raise UsageError(
            f"the {provider} model {spec.model!r} needs an API key in the environment "
            f"variable {name}, which is not set (set it, or name another variable with "
            f"'api_key_env' in the model's entry of the mesh file)"
        )
    return key, name


def _served(spec: ModelSpec, env: Env, where: _Where) -> tuple[str, str]:
    """The base URL and credential of a model served by the mesh's own model server."""
    from microhive.service import mesh_token, service_url

    assert spec.service is not None
    if where.mesh is None:
        raise UsageError(
            f"the model {spec.model!r} is served by the mesh service {spec.service!r}; "
            "open it with the mesh (open_model(spec, mesh=...)) so its address is known"
        )
    url = service_url(where.mesh, kind="model-server", name=spec.service, state_dir=where.state_dir)
    # The model server is a mesh service: it takes the mesh's token, and no other.
    return url + "/v1", mesh_token(where.mesh, env) or "no-key"


def _openai(spec: ModelSpec, env: Env, where: _Where) -> ModelProvider:
    try:
        from microhive.models.openai_compat import OpenAIModel
    except ImportError as exc:
        raise MissingDependency("openai", "models", "The 'openai' model provider") from exc
    if spec.service is not None:
        base_url, key = _served(spec, env, where)
        key_env = None
    else:
        key, key_env = _key(spec, env, "OPENAI_API_KEY", "openai")
        base_url = spec.base_url or env.get("OPENAI_BASE_URL") or ""
    return OpenAIModel(
        spec.model,
        api_key=key,
        base_url=base_url or None,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        key_env=key_env,
        timeout=spec.timeout,
        retries=spec.retries,
        tool_calls=spec.tool_calls,
        stream=spec.stream if spec.stream is not None else spec.service is not None,
        context_size=spec.context_size,
        essential_arguments=_essential(spec),
    )


def _anthropic(spec: ModelSpec, env: Env, where: _Where) -> ModelProvider:
    try:
        from microhive.models.anthropic_messages import AnthropicModel
    except ImportError as exc:
        raise MissingDependency("anthropic", "models", "The 'anthropic' model provider") from exc
    key, key_env = _key(spec, env, "ANTHROPIC_API_KEY", "anthropic")
    return AnthropicModel(
        spec.model,
        api_key=key,
        base_url=spec.base_url or env.get("ANTHROPIC_BASE_URL") or None,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        key_env=key_env,
        timeout=spec.timeout,
        retries=spec.retries,
        tool_calls=spec.tool_calls,
        context_size=spec.context_size,
        essential_arguments=_essential(spec),
    )


def _essential(spec: ModelSpec) -> bool:
    if spec.tool_arguments is not None:
        return spec.tool_arguments == "essential"
    return spec.service is not None  # a small local model, most likely


_PROVIDERS: dict[str, Callable[[ModelSpec, Env, _Where], ModelProvider]] = {
    "offline": _offline,
    "openai": _openai,
    "anthropic": _anthropic,
    "scripted": _scripted,
}


def available_providers() -> list[str]:
    """The provider names :func:`open_model` accepts."""
    return sorted(_PROVIDERS)


def open_model(
    spec: ModelSpec | None = None,
    env: Env | None = None,
    *,
    mesh: MeshConfig | None = None,
    state_dir: Path | None = None,
) -> ModelProvider:
    """The provider a model entry of the mesh file describes (offline when ``spec`` is None).

    ``mesh`` (and the mesh's ``state_dir``, where running services note their
    ports) resolve a ``service:`` entry to the model server's address.

    Raises :class:`MissingDependency` when the provider's SDK is not installed
    (``pip install 'microhive[models]'``) and :class:`UsageError` naming the
    environment variable when its API key is not set.
    """
    spec = spec or ModelSpec()
    factory = _PROVIDERS.get(spec.provider)
    if factory is None:
        raise ConfigError(
            f"unknown model provider {spec.provider!r}; expected one of: "
            + ", ".join(available_providers()),
            field="provider",
        )
    return factory(spec, os.environ if env is None else env, _Where(mesh, state_dir))
