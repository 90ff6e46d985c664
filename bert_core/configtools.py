"""The base of every config model, and the plain-dict plumbing around it (YAML, ``--set``).

The configs are frozen pydantic models: the field types, ``Field`` bounds and
descriptions are the schema (``PipelineConfig.model_json_schema()`` feeds
Prefect's form), and pydantic does the checking. We only turn its
``ValidationError`` into one :class:`ConfigError` line that names the dotted key.
(The stage configs used to be dataclasses because the GPU machine had no
pydantic; the GPU kit now carries pydantic wheels, so that reason is gone.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, WithJsonSchema
from pydantic_core import to_jsonable_python

from bertflow.bert_core.errors import ConfigError

T = TypeVar("T", bound="Config")


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, (str, os.PathLike)) else value


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A file path (or glob). Relative paths written in a YAML file resolve against that file's folder.
_PATH_SCHEMA = WithJsonSchema({"type": "string", "format": "path"})
PathStr = Annotated[str, BeforeValidator(_fspath), _PATH_SCHEMA]
# A list of strings that also takes a single string (``ingest.inputs=a.txt``); kept a tuple (hashable).
Strings = Annotated[tuple[str, ...], BeforeValidator(_one_or_many)]
Paths = Annotated[tuple[PathStr, ...], BeforeValidator(_one_or_many)]


class Config(BaseModel):
    """A frozen config section; bad values raise ConfigError naming ``section.key``."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True, validate_default=True,
                              protected_namespaces=())
    section: ClassVar[str] = ""  # the YAML section this model fills ("" for the top level)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(explain(exc, type(self))) from None

    # Nested sections validate inside their parent (whose error then names the full key), not through
    # this __init__: pydantic calls a subclass's own __init__ for nested models unless it carries this mark.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Validate a plain mapping (YAML, JSON) into ``cls``."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{cls.section or 'config'}: expected a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(explain(exc, cls)) from None


def evolve(cfg: T, **changes: Any) -> T:
    """A copy of ``cfg`` with ``changes``, validated again (``dataclasses.replace`` for configs)."""
    return type(cfg)(**{**dict(cfg), **changes})


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a config, or of a plain dict of settings (tuples become lists)."""
    return to_jsonable_python(cfg)


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
             "tuple": "a list", "model": "a section (mapping)"}


def explain(exc: ValidationError, cls: type[Config]) -> str:
    """Pydantic's errors as one line: ``mask.masked_lm_prob: must be < 1 (got 1.5); ...``."""
    errors = exc.errors()
    # a list whose items failed is also "too short" after validation: name the items only
    errors = [e for e in errors if e["type"] != "too_short"
              or not any(o is not e and o["loc"][:len(e["loc"])] == e["loc"] for o in errors)]
    return "; ".join(_explain_one(err, cls) for err in errors)


def _explain_one(err: Any, cls: type[Config]) -> str:
    loc = ([cls.section] if cls.section else []) + list(err["loc"])
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "config"
    kind, ctx, got = err["type"], err.get("ctx") or {}, err["input"]
    if kind == "extra_forbidden":
        known = ", ".join(sorted(_model_at(cls, err["loc"][:-1]).model_fields))
        return f"unknown config key {key!r} (known keys here: {known})"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"{key}: must be {_BOUNDS[kind]} {bound} (got {got!r})"
    if kind == "literal_error":
        return f"{key}: {got!r} is not one of {ctx['expected'].replace(' or ', ', ')}"
    if kind == "too_short":
        return f"{key}: needs at least {ctx['min_length']} item{'s' * (ctx['min_length'] > 1)} (got {len(got)})"
    if kind == "string_pattern_mismatch":
        return f"{key}: {got!r} does not match {ctx['pattern']}"
    if kind == "value_error":
        return f"{key}: {ctx['error']}"
    expected = _EXPECTED.get(kind.split("_")[0])
    if expected and (kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float"):
        return f"{key}: expected {expected}, got {got!r}"
    return f"{key}: {err['msg']} (got {got!r})"


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The section at ``loc``: only sections hold unknown keys, so every step is a model or a dict of them."""
    tp: Any = cls
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation
        else:  # ``dict[str, Section]`` (a sweep space's params): the key picks one section
            tp = get_args(tp)[-1]
    return tp


def _is_path(tp: Any) -> bool:
    return any(m is _PATH_SCHEMA for m in getattr(tp, "__metadata__", ())) or any(map(_is_path, get_args(tp)))


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # models:/..., runs:/..., s3://... (not C:\)


def resolve_paths(cls: type[BaseModel], data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``data`` (read from a YAML file in folder ``base``) with its relative path values made absolute
    against ``base``, as docker-compose does; absolute paths and URIs stay as they are."""
    def against(value: Any) -> Any:
        if isinstance(value, list):
            return [against(v) for v in value]
        if not isinstance(value, str) or not value or os.path.isabs(os.path.expanduser(value)) or _URI.match(value):
            return value
        return os.path.normpath(os.path.join(base.absolute(), value))

    out = dict(data)
    for name, value in data.items():
        field = cls.model_fields.get(name) if isinstance(name, str) else None
        if field is None:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            if isinstance(value, Mapping):
                out[name] = resolve_paths(field.annotation, value, base)
        elif _PATH_SCHEMA in field.metadata or _is_path(field.annotation):
            out[name] = against(value)
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the form MLflow params take."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict copy."""
    result = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. mask.masked_lm_prob=0.2)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset; a missing file or a non-mapping top level is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}
