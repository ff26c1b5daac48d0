"""Typed configs: the strict pydantic base, ``--set key.sub=value`` overrides, one-line errors.

Every config of the platform (data specs, training and image-tokenizer configs, pipeline params,
sampler settings) is a pydantic model built on :class:`Strict`, read from YAML, adjusted with
dotted overrides (values parsed as YAML) and validated here, so a bad value anywhere reads the same:

    cfg = load_config(TrainConfig, "configs/train/tiny_pretrain.yaml", ["optim.lr=3e-4"])
    cfg = load_config(VQTrainConfig, tiny(), ["trainer.max_steps=200"])   # a config object (a preset)
    # ConfigError: configs/x.yaml: invalid TrainConfig: optim.lr: Input should be greater than 0 (got -1)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mmada.errors import ConfigError, MMaDAError

M = TypeVar("M", bound=BaseModel)


MAX_STEPS = 10_000_000
"""Upper bound of step counts a config (and so a Prefect form, the API) accepts: far above any real run
(MMaDA's pretraining is some hundred thousand steps), far below a typo such as ``10**12``."""
MAX_COUNT = 1_000_000
"""Upper bound of other counts (items, generations, retries, images) a config accepts."""
MAX_IMAGE_SIDE = 8192
"""Upper bound of an image side (pixels) a config may ask to generate or resize to: 16x MMaDA's 512 px,
far below a typo such as ``200000`` (one 200000 px RGB image is 120 GB)."""


class Strict(BaseModel):
    """Unknown fields are errors and assignments are validated (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Pydantic error types whose offending input is the whole section (or absent): not worth echoing.
_NO_INPUT = {"missing", "value_error", "extra_forbidden", "assertion_error"}


def _loc(loc: tuple, tags: frozenset[str]) -> str:
    # Drop what pydantic inserts for unions: validator names ("function-after[...]") and the
    # discriminator value after a list index (sources.0.gsm8k.uri -> sources.0.uri).
    return ".".join(str(item) for i, item in enumerate(loc)
                    if not str(item).startswith("function-")
                    and not (item in tags and i > 0 and isinstance(loc[i - 1], int)))


def format_errors(exc: ValidationError, *, tags: frozenset[str] = frozenset()) -> str:
    """``field.path: message (got value); …`` for every problem pydantic found (``tags``: the
    discriminator values of tagged unions, left out of the field path)."""
    problems = []
    for e in exc.errors():
        loc = _loc(tuple(e.get("loc", ())), tags)
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        got = f" (got {e['input']!r})" if e["type"] not in _NO_INPUT and "input" in e else ""
        problems.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return "; ".join(problems)


def validate(cls: type[M], data: Any, where: str, *, error: type[MMaDAError] = ConfigError,
             tags: frozenset[str] = frozenset()) -> M:
    """``cls.model_validate(data)`` with every problem in one ``error`` that starts with ``where``."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping of config fields, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise error(f"{where}: {format_errors(exc, tags=tags)}") from None


def read_yaml(path: str | Path, *, error: type[MMaDAError] = ConfigError) -> dict:
    """A YAML file that holds a mapping (an empty file is ``{}``)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"config file {str(p)!r} does not exist")
    return parse_yaml(p.read_text(encoding="utf-8"), str(p), error=error)


def parse_yaml(text: str, where: str, *, error: type[MMaDAError] = ConfigError) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def parse_override(item: str, *, error: type[MMaDAError] = ConfigError) -> tuple[str, Any]:
    """``"a.b=3e-4"`` → ``("a.b", 0.0003)``; the value is YAML (numbers, lists, ``null``, ``{k: v}``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise error(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: the literal text (e.g. a caption with a colon)
    return key, value


def set_dotted(tree: dict, key: str, value: Any, *, error: type[MMaDAError] = ConfigError) -> None:
    """Set ``a.b.0.c`` in nested dicts and lists, creating mappings on the way."""
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last, here = i == len(parts) - 1, ".".join(parts[:i]) or "(root)"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise error(f"--set {key}: {here} has no item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise error(f"--set {key}: {here} is a value, not a section")


def apply_overrides(tree: dict, overrides: list[str] | None, *, error: type[MMaDAError] = ConfigError) -> dict:
    """A copy of ``tree`` with every ``key=value`` override applied in order."""
    tree = copy.deepcopy(tree)
    for item in overrides or []:
        key, value = parse_override(item, error=error)
        set_dotted(tree, key, value, error=error)
    return tree


def load_config(cls: type[M], source: str | Path | dict | BaseModel, overrides: list[str] | None = None) -> M:
    """A YAML file, a dict or a config object (e.g. a preset), with ``key=value`` overrides, validated as ``cls``."""
    if isinstance(source, BaseModel):
        tree, where = source.model_dump(mode="json"), f"{type(source).__name__} object"
    elif isinstance(source, dict):
        tree, where = source, "config"
    else:
        tree, where = read_yaml(source), str(source)
    return validate(cls, apply_overrides(tree, overrides), f"{where}: invalid {cls.__name__}")
