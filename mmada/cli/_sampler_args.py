"""Command-line flags generated from a sampler-settings model, so every option reaches every command.

``mmada generate``, ``mmada t2i`` and ``mmada eval math|mmu|t2i`` take one flag per field of
:class:`~mmada.diffusion.settings.SamplerSettings` / :class:`ImageSamplerSettings` (``--gen-length``,
``--cache``, ``--stop-at-eos`` …), with the field's type, choices and docstring. A flag that is not
given is left out, so the settings' own defaults apply (the plain sampler).
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import ConfigError

Settings = SamplerSettings | ImageSamplerSettings


def _flag_type(name: str, annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field's annotation (``int``, ``float | None``, ``Literal[...]``, ``bool``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is Literal:
        return {"choices": list(typing.get_args(annotation))}
    return {"type": annotation, "metavar": name.upper()}


def _dest(prefix: str, name: str) -> str:
    return f"{prefix.replace('-', '_')}sampler_{name}"


def add_sampler_args(parser: argparse.ArgumentParser, cls: type[BaseModel], title: str, *, prefix: str = "") -> None:
    """One ``--<prefix>field-name`` per field of ``cls`` (default: the field's default, shown in ``--help``).

    ``prefix`` (e.g. ``think-``) gives a command a second sampler's flags (``--think-gen-length``)."""
    g = parser.add_argument_group(title)
    for name, field in cls.model_fields.items():
        help_text = f"{(field.description or '').strip()} (default: {field.default})".strip()
        g.add_argument(f"--{prefix}{name.replace('_', '-')}", dest=_dest(prefix, name), default=argparse.SUPPRESS,
                       help=help_text.replace("%", "%%"), **_flag_type(name, field.annotation))


def sampler_from_args(cls: type[Settings], args: argparse.Namespace, *, prefix: str = "", **defaults: Any) -> Settings:
    """The settings the flags describe: given flags, then ``defaults``, then the model's defaults."""
    given = {name: getattr(args, _dest(prefix, name)) for name in cls.model_fields if hasattr(args, _dest(prefix, name))}
    return cls.make(**{**defaults, **given})


def given_sampler_fields(args: argparse.Namespace) -> set[str]:
    """The sampler fields set on the command line."""
    return {k.removeprefix("sampler_") for k in vars(args) if k.startswith("sampler_")}


def parse_config_overrides(items: list[str] | None) -> dict[str, Any]:
    """``--config-override num_vq_tokens=1024`` (repeatable) → ``{"num_vq_tokens": 1024}`` (YAML values);
    the loader validates the fields (``MMaDAConfig.with_overrides``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--config-override {item!r}: expected FIELD=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out
