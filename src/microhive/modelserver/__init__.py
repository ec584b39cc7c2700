"""A local LLM server: llama.cpp on a GGUF file, as the mesh service kind ``model-server``.

* :mod:`~microhive.modelserver.fetch` -- the catalog of packaged models and their
  assembly from PyPI chunk wheels (standard library only; runs before install).
* :mod:`~microhive.modelserver.catalog` -- which file a ``model`` setting names.
* :mod:`~microhive.modelserver.settings` -- the service's checked settings.
* :mod:`~microhive.modelserver.validation` -- checking a chat completion request.
* :mod:`~microhive.modelserver.engine` -- llama.cpp in-process, through ``xllamacpp``
  (an optional dependency: ``pip install 'microhive[model-server]'``).
* :mod:`~microhive.modelserver.service` -- the OpenAI-compatible service.

Importing this package loads neither ``xllamacpp`` nor a model.
"""

from microhive.modelserver.catalog import (
    CATALOG,
    DEFAULT_MODEL,
    ModelFile,
    PackagedModel,
    catalog,
    default_model_dir,
    fetch_command,
    resolve_model,
)
from microhive.modelserver.fetch import FetchError, ensure_model, model_path, verify
from microhive.modelserver.settings import ModelServerSettings, parse_settings

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "FetchError",
    "ModelFile",
    "ModelServerSettings",
    "PackagedModel",
    "catalog",
    "default_model_dir",
    "ensure_model",
    "fetch_command",
    "model_path",
    "parse_settings",
    "resolve_model",
    "verify",
]
