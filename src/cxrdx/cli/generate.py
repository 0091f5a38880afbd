"""The one mechanism that turns a job's ``Config`` dataclass into a subcommand's flags, and back.

Each ``option(...)`` field becomes ``--field-name`` (or its ``flag``/``positional``), typed from the
annotation: ``bool`` -> a switch (``--x``, or ``--x/--no-x`` when negatable), ``list[T]``/``tuple[T, ...]``
-> one or more values, ``X | None`` -> ``X`` with default None, ``choices`` as given. Old spellings
(``aliases``) are accepted and hidden from ``--help``. Defaults and help live in the Config only.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any

from cxrdx.options import flag_of, spec_of

_REQUIRED = object()  # the value of a required option no spelling set (checked after parsing)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether it was optional); ``str | list[str]`` is read as the list."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        listed = [a for a in args if _sequence_item(a) is not None]
        if listed:
            return listed[0], optional
    return annotation, False


def _sequence_item(annotation: Any) -> Any | None:
    """``T`` for ``list[T]``, ``tuple[T, ...]`` or ``Sequence[T]``; None otherwise."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, typing.Sequence) or str(origin) == "<class 'collections.abc.Sequence'>":
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return args[0] if args else str
    return None


def _default_text(default: Any) -> str:
    if isinstance(default, list | tuple):
        return " ".join(map(str, default))
    return str(default)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, only_given: bool = False) -> None:
    """One argument per ``option`` field of ``config_cls``; fields without one stay off the command line.

    ``only_given``: a flag not on the command line leaves no attribute (so a config file or a resumed
    run's settings are not overridden by defaults); ``given_settings`` then collects what was given.
    """
    hints = typing.get_type_hints(config_cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(config_cls):
        spec = spec_of(field)
        if spec is None:
            continue
        target = parser
        if spec.group:
            if spec.group not in groups:
                groups[spec.group] = parser.add_argument_group(spec.group, config_cls.GROUPS[spec.group])
            target = groups[spec.group]
        annotation, _optional = _unwrap(hints[field.name])
        has_default = (
            field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        )
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else (field.default_factory() if has_default else None)
        )
        kwargs: dict[str, Any] = {"help": spec.help}
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        if spec.choices is not None:
            kwargs["choices"] = list(spec.choices)
        item = _sequence_item(annotation)
        if annotation is bool:
            kwargs["action"] = (
                argparse.BooleanOptionalAction
                if spec.negatable
                else ("store_false" if default else "store_true")
            )
            kwargs.pop("metavar", None)
        elif item is not None and spec.repeat:
            kwargs["type"] = item
            kwargs["action"] = "append"
        elif item is not None:
            kwargs["type"] = item
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = annotation
        kwargs["help"] = spec.help.replace("%", "%%")  # argparse formats help with %
        if has_default and annotation is not bool and default not in (None, (), [], ""):
            kwargs["help"] += f" (default {_default_text(default)})"
        if spec.positional:
            if has_default:
                kwargs["nargs"] = "?" if item is None else "*"
            kwargs.pop("metavar", None)
            parser.add_argument(
                field.name, metavar=spec.metavar or field.name.upper(), default=default, **kwargs
            )
            continue
        names = [flag_of(field)] + ([spec.short] if spec.short else [])
        required = not has_default
        target.add_argument(
            *names,
            dest=field.name,
            default=argparse.SUPPRESS
            if only_given
            else (_REQUIRED if required else ([] if spec.repeat else default)),
            required=required and not spec.aliases and not only_given,
            **kwargs,
        )
        for alias in spec.aliases:
            hidden = {k: v for k, v in kwargs.items() if k != "help"}
            if hidden.get("action") is argparse.BooleanOptionalAction:
                hidden["action"] = "store_true"
            parser.add_argument(
                alias, dest=field.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **hidden
            )


def config_from_args(config_cls: type, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """The ``config_cls`` the parsed flags ask for (a required flag given by no spelling is a usage error)."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for field in dataclasses.fields(config_cls):
        if spec_of(field) is None:
            continue
        value = getattr(args, field.name)
        if value is _REQUIRED:
            parser.error(f"the following arguments are required: {flag_of(field)}")
        annotation, _ = _unwrap(hints[field.name])
        if typing.get_origin(annotation) is tuple and isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return config_cls(**values)


def given_settings(config_cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The ``config_cls`` settings named on the command line (parsed with ``only_given``)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if spec_of(f) is not None and hasattr(args, f.name)
    }


def flags_in(message: str, config_cls: type) -> str:
    """A library message with each backquoted parameter name (`image_size`) shown as its flag (--image-size)."""
    names = {f.name: flag_of(f) for f in dataclasses.fields(config_cls) if spec_of(f) is not None}
    return re.sub(r"`(\w+)`", lambda m: names.get(m.group(1), m.group(0)), message)
