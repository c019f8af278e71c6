"""Settings declared once: a dataclass field with its help text drives the CLI option, the grid key and the record.

A settings class (``PruneSettings``, each analysis) declares every option as
a field made with ``setting(default, help)``. ``command`` turns such a class
into a typer command whose options are those fields (same names, defaults
and help), so the CLI never repeats a settings list; the grid reads the same
fields as its accepted keys, and ``from_mapping`` builds settings from a
grid's or a config file's keys with one message for an unknown key. Lists
are comma-separated on the command line (``--langs en,de``), or repeated
(``--include '*mlp*' --include '*attn*'``) where the field says so.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

import typer

from .errors import UserError, did_you_mean


def setting(
    default: Any = None,
    help: str | Callable[[], str] = "",
    *,
    flag: str | None = None,
    repeat: bool = False,
    argument: bool = False,
    cli: bool = True,
    required: bool = False,
    envvar: str | None = None,
) -> Any:
    """A settings field: ``flag`` renames its option, ``repeat`` takes a list as repeated options, ``argument``
    makes it positional, ``cli=False`` keeps it off the command line (set by the command itself). ``help`` may be
    a function, called when the command is made (a list read from a registry)."""
    metadata = {
        "help": help,
        "flag": flag,
        "repeat": repeat,
        "argument": argument,
        "cli": cli,
        "required": required,
        "envvar": envvar,
    }
    if isinstance(default, (list, tuple, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    if required:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Each field of a settings class with its resolved type."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _unwrap(kind) -> tuple[Any, bool]:
    """(type, optional) of ``X | None``."""
    if isinstance(kind, UnionType) or typing.get_origin(kind) is typing.Union:
        members = [k for k in typing.get_args(kind) if k is not NoneType]
        return members[0], True
    return kind, False


def _element(kind) -> Any | None:
    """The element type of ``tuple[X, ...]``, else None."""
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0]
    return None


def flag_of(name: str, field: dataclasses.Field) -> str:
    return "--" + (field.metadata.get("flag") or name.replace("_", "-"))


def _parameter(name: str, field: dataclasses.Field, kind) -> inspect.Parameter:
    """The typer parameter of one field: its CLI type, default and help."""
    meta = field.metadata
    base, optional = _unwrap(kind)
    element = _element(base)
    default = field.default if field.default is not dataclasses.MISSING else None
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    if element is not None and (meta["repeat"] or meta["argument"] or element is Path):
        annotation, default = list[element], list(default or [])
    elif element is not None:  # comma-separated on the command line
        annotation, default = str | None, ",".join(map(str, default)) if default else None
    else:
        annotation = base | None if optional else base
    if meta["required"] and not meta["argument"]:
        default = ...
    text = meta["help"]() if callable(meta["help"]) else meta["help"]
    if meta["argument"]:
        info = typer.Argument(... if meta["required"] else default, help=text, show_default=False)
    else:
        info = typer.Option(default, flag_of(name, field), help=text, envvar=meta.get("envvar"))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _convert(name: str, field: dataclasses.Field, kind, value):
    """A CLI value as the field holds it: comma lists as tuples (ints checked), lists as tuples."""
    base, _ = _unwrap(kind)
    element = _element(base)
    if element is None:
        return value
    if value is None:
        return ()
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
        if element is int:
            try:
                return tuple(int(item) for item in items)
            except ValueError:
                raise UserError(
                    f"{flag_of(name, field)} takes comma-separated integers, e.g. 9,17; not {value!r}"
                ) from None
        return tuple(element(item) for item in items)
    return tuple(value)


def command(
    cls,
    run,
    grouped: dict[str, dict[str, tuple[dataclasses.Field, Any]]] | None = None,
    base: Callable[..., dict] | None = None,
    **fixed,
):
    """A typer command function whose options are ``cls``'s CLI fields; it builds ``cls`` and calls ``run(settings)``.

    ``fixed`` gives fields their values without an option. A field whose
    type is itself a settings dataclass (``EvalSettings.options``) adds that
    class' fields as options and is built from them. ``grouped`` adds
    options gathered into one dict field (``{"method_options": {key: (field,
    type)}}``): each is optional, and only those given land in the dict.
    Extra options of the command itself (``--json``) are declared by
    ``run``'s own keyword parameters after the first, as typer parameters.
    With ``base`` (called with those extra options), the settings start from
    the flat mapping it returns (a config file, a run's report) and only the
    options given on the command line override it; ``cls.from_mapping``
    builds them, so the mapping's keys and types are checked.
    """
    declared, nested = {}, {}  # option name -> (field, type); nested field -> (class, its option names)
    for name, (field, kind) in fields(cls).items():
        if not field.metadata.get("cli", True) or name in fixed:
            continue
        if dataclasses.is_dataclass(kind):
            own = {n: fk for n, fk in fields(kind).items() if fk[0].metadata.get("cli", True)}
            nested[name] = (kind, list(own))
            declared.update(own)
        else:
            declared[name] = (field, kind)
    members = {
        key: (target, field, kind) for target, group in (grouped or {}).items() for key, (field, kind) in group.items()
    }
    extra = list(inspect.signature(run).parameters.values())[1:]
    ordered = sorted(declared.items(), key=lambda item: not item[1][0].metadata.get("argument"))
    parameters = [_parameter(name, field, kind) for name, (field, kind) in ordered]
    parameters += [
        inspect.Parameter(
            key,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, flag_of(key, field), help=field.metadata["help"]),
            annotation=_unwrap(kind)[0] | None,
        )
        for key, (_, field, kind) in members.items()
    ]
    hints = typing.get_type_hints(run)
    parameters += [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)) for p in extra
    ]
    if base is not None:
        parameters.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

    def invoke(**values):
        ctx = values.pop("ctx", None)
        own = {p.name: values.pop(p.name) for p in extra}
        start = base(**own) if base is not None else None
        if start:
            given = {n for n in values if ctx.get_parameter_source(n).name in ("COMMANDLINE", "ENVIRONMENT")}
            flat = {**start}
            for name in given:
                if name in members:
                    flat[name] = values[name]
                else:
                    flat[name] = _convert(name, *declared[name], values[name])
            return run(cls.from_mapping(flat, "the command line", **fixed), **own)
        groups: dict[str, dict] = {target: {} for target in grouped or {}}
        for key, (target, _, _) in members.items():
            if values.get(key) is not None:
                groups[target][key] = values[key]
            values.pop(key)
        converted = {name: _convert(name, *declared[name], value) for name, value in values.items()}
        built = {target: kind(**{n: converted.pop(n) for n in names}) for target, (kind, names) in nested.items()}
        return run(cls(**fixed, **converted, **built, **groups), **own)

    invoke.__signature__ = inspect.Signature(parameters)
    invoke.__doc__ = (cls.__doc__ or "").strip().split("\n\n")[0]
    return invoke


def from_mapping(cls, values: dict, where: str, **fixed):
    """Settings from a mapping (a grid's or a config file's keys): an unknown key is one clear error."""
    known = fields(cls)
    for key in values:
        if key not in known:
            raise UserError(
                f"unknown key {key!r} in {where}{did_you_mean(str(key), known)}; known: {', '.join(sorted(known))}"
            )
    converted = {key: typed(key, value, known[key][1], where) for key, value in values.items()}
    return cls(**fixed, **converted)


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}


def typed(key: str, value, kind, where: str):
    """``value`` as field ``key`` holds it (lists as tuples, paths from strings), or one clear error for a wrong type."""
    base, optional = _unwrap(kind)
    element = _element(base)
    if value is None and (optional or element is not None):
        return () if element is not None else None
    if element is not None:
        items = value if isinstance(value, (list, tuple)) else None
        if items is None or not all(_fits(item, element) for item in items):
            raise UserError(f"{key} in {where} must be a list of {TYPE_NAMES.get(element, element)}s, not {value!r}")
        return tuple(Path(item) if element is Path else item for item in items)
    if dataclasses.is_dataclass(base) or base is dict:
        if isinstance(value, dict):
            return base(**value) if dataclasses.is_dataclass(base) else value
        raise UserError(f"{key} in {where} must be a mapping, not {value!r}")
    if not _fits(value, base):
        raise UserError(f"{key} in {where} must be {TYPE_NAMES.get(base, base)}, not {value!r}")
    if base is Path:
        return Path(value)
    if base is float:
        return float(value)
    return str(value) if base is str else value


def _fits(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is Path:
        return isinstance(value, (str, Path))
    if kind is str:  # numbers are fine where text is expected (sparsity: 0.5 in YAML)
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return True


def jsonable(value):
    """Settings as JSON: paths as strings, tuples as lists, no NaN."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
