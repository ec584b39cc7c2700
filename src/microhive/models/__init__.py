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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from microhive.config import ModelSpec
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
from microhive.models.types import (
    AssistantMessage,
    ChatRequest,
    ChatResult,
    FinishReason,
    Message,
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
    "ChatRequest",
    "ChatResult",
    "FinishReason",
    "Message",
    "ModelProvider",
    "Reply",
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
    "task_messages",
]

Env = Mapping[str, str]


def _offline(spec: ModelSpec, env: Env) -> ModelProvider:
    from microhive.models.offline import OfflineModel

    return OfflineModel(spec.model)


def _scripted(spec: ModelSpec, env: Env) -> ModelProvider:
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


def _openai(spec: ModelSpec, env: Env) -> ModelProvider:
    try:
        from microhive.models.openai_compat import OpenAIModel
    except ImportError as exc:
        raise MissingDependency("openai", "models", "The 'openai' model provider") from exc
    key, key_env = _key(spec, env, "OPENAI_API_KEY", "openai")
    return OpenAIModel(
        spec.model,
        api_key=key,
        base_url=spec.base_url or env.get("OPENAI_BASE_URL") or None,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        key_env=key_env,
    )


def _anthropic(spec: ModelSpec, env: Env) -> ModelProvider:
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
    )


_PROVIDERS: dict[str, Callable[[ModelSpec, Env], ModelProvider]] = {
    "offline": _offline,
    "openai": _openai,
    "anthropic": _anthropic,
    "scripted": _scripted,
}


def available_providers() -> list[str]:
    """The provider names :func:`open_model` accepts."""
    return sorted(_PROVIDERS)


def open_model(spec: ModelSpec | None = None, env: Env | None = None) -> ModelProvider:
    """The provider a model entry of the mesh file describes (offline when ``spec`` is None).

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
    return factory(spec, os.environ if env is None else env)
