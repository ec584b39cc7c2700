"""Reading a mesh file: YAML with line numbers, environment overrides, validation.

Errors point at the place to fix: ``microhive.yaml:14: services.web.port:
expected an integer between 1 and 65535, got 'http'``.

Environment overrides
---------------------
Two mechanisms, applied in this order:

1. ``${NAME}`` and ``${NAME:-default}`` inside any string value are replaced by
   the environment variable (an unset variable without a default is an error).
2. A variable ``MICROHIVE__A__B__C=value`` sets the key path ``a.b.c`` (``__``
   separates levels; names are matched lower-case, ``_`` inside a level stays
   ``_``). The value is read as a YAML scalar or flow value, so ``8080``,
   ``true``, ``[a, b]`` and ``{x: 1}`` have their YAML types. Missing mappings
   along the path are created. An error in an override names the variable.

Only ``MICROHIVE__``-prefixed variables (two underscores) are overrides; settings
such as ``MICROHIVE_REQUIRE_SERVICES`` are not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from microhive.config.model import MeshConfig, ReferenceProblem
from microhive.errors import ConfigError

__all__ = ["DEFAULT_FILE", "ENV_PREFIX", "find_config", "load_config", "parse_config"]

DEFAULT_FILE = "microhive.yaml"
ENV_PREFIX = "MICROHIVE__"
_INTERPOLATE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Path_ = tuple[str | int, ...]


def find_config(path: str | Path | None = None) -> Path:
    """The mesh file to use: ``path``, else ``$MICROHIVE_CONFIG``, else ``./microhive.yaml``."""
    chosen = Path(path or os.environ.get("MICROHIVE_CONFIG") or DEFAULT_FILE)
    if not chosen.is_file():
        raise ConfigError(
            "no mesh file here; create one with 'microhive init' or pass -f FILE",
            file=str(chosen),
        )
    return chosen


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> MeshConfig:
    """Read, override and validate a mesh file."""
    file = find_config(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", file=str(file)) from exc
    return parse_config(text, file=str(file), env=os.environ if env is None else env)


def parse_config(
    text: str, *, file: str = "<string>", env: Mapping[str, str] | None = None
) -> MeshConfig:
    env = {} if env is None else env
    data, lines = _read_yaml(text, file)
    data = _interpolate(data, (), lines, file, env)
    sources: dict[Path_, str] = {}
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            _apply_override(data, name, value, sources)
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        raise _to_config_error(exc, file, lines, sources) from None


# ------------------------------------------------------------------ reading


def _read_yaml(text: str, file: str) -> tuple[dict[str, Any], dict[Path_, int]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", file=file, line=line) from None
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            "expected a mapping of settings at the top level",
            file=file,
            line=root.start_mark.line + 1,
        )
    lines: dict[Path_, int] = {}
    return _construct(root, (), lines, file), lines


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    "mapping keys must be plain strings",
                    file=file,
                    line=key_node.start_mark.line + 1,
                )
            key = str(key_node.value)
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r}",
                    file=file,
                    line=key_node.start_mark.line + 1,
                    field=_dotted((*path, key)),
                )
            out[key] = _construct(value_node, (*path, key), lines, file)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines, file) for i, item in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def _interpolate(
    value: Any, path: Path_, lines: dict[Path_, int], file: str, env: Mapping[str, str]
) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), lines, file, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), lines, file, env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set (write ${{{name}:-default}} for a default)",
            file=file,
            line=lines.get(path),
            field=_dotted(path),
        )

    return _INTERPOLATE.sub(substitute, value)


def _apply_override(data: dict[str, Any], name: str, raw: str, sources: dict[Path_, str]) -> None:
    parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
    if not all(parts):
        raise ConfigError(
            f"cannot read the key path from {name!r}: levels are separated by '__'",
            file=f"environment variable {name}",
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"value {raw!r} is not valid YAML: {exc}", file=f"environment variable {name}"
        ) from None
    target: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(
                f"{'.'.join(parts[: i + 1])} is not a mapping, cannot set {'.'.join(parts)}",
                file=f"environment variable {name}",
            )
        target = nxt
    target[parts[-1]] = value
    sources[tuple(parts)] = name


# ------------------------------------------------------------------- errors


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _to_config_error(
    exc: ValidationError, file: str, lines: dict[Path_, int], sources: dict[Path_, str]
) -> ConfigError:
    """The first validation error as a ConfigError; the others are appended."""
    messages: list[tuple[str | None, int | None, str, str]] = []
    for err in exc.errors(include_url=False):
        loc: Path_ = tuple(p for p in err["loc"] if isinstance(p, str | int))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ReferenceProblem):
            loc = (*loc, *cause.path)
        # pydantic puts a tagged/function validator name into loc; drop what is not a key.
        where_file: str | None = file
        line = None
        for cut in range(len(loc), -1, -1):
            prefix = loc[:cut]
            if prefix in sources:
                where_file, line = f"environment variable {sources[prefix]}", None
                break
            if prefix in lines:
                line = lines[prefix]
                break
        messages.append((where_file, line, _dotted(loc) or "(top level)", _describe(err)))
    first_file, first_line, first_field, first_msg = messages[0]
    extra = [f"{f}{':' + str(ln) if ln else ''}: {fld}: {m}" for f, ln, fld, m in messages[1:]]
    message = first_msg + ("".join(f"\n  also {e}" for e in extra) if extra else "")
    return ConfigError(message, file=first_file, line=first_line, field=first_field)


def _describe(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; 'microhive init' writes every key with comments)"
    if kind == "missing":
        return "this key is required"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.startswith(("greater", "less", "literal", "int_", "bool_")):
        return f"{msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"
    return msg
