"""One source of truth per configuration: each field's default, help and checks, written once.

A configuration is a frozen dataclass whose fields are declared with :func:`option` and whose
``__post_init__`` calls :func:`validate`. Command-line flags are derived from it
(:func:`add_flags`, :func:`from_flags`): every field is a flag, ``--name-with-dashes`` unless
the option names another, and the same checks run whether a configuration is built from flags
or in Python.

Example:
  >>> @dataclasses.dataclass(frozen=True)
  ... class Config:
  ...   epochs: int = option(10, "training epochs", greater_than=0)
  ...   def __post_init__(self):
  ...     validate(self)
  >>> parser = argparse.ArgumentParser()
  >>> add_flags(parser, Config)
  >>> from_flags(Config, parser.parse_args(["--epochs", "3"]))
  Config(epochs=3)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import types
import typing
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
  """A configuration field with a value it cannot take.

  Attributes:
    field: the field's name.
    message: what is wrong, without the field's name.
  """

  def __init__(self, field: str, message: str):
    self.field = field
    self.message = message
    super().__init__(f"{field}: {message}")


def option(
  default: Any,
  help: str,  # argparse's name
  *,
  flag: str | None = None,
  choices: Sequence[Any] | None = None,
  noun: str = "value",
  greater_than: float | None = None,
  at_least: float | None = None,
  below: float | None = None,
  repeatable: bool = False,
) -> Any:
  """A dataclass field with its help, flag name and checks.

  Args:
    default: the default value (tuples for sequences: the config stays hashable).
    help: one line for ``--help``.
    flag: the flag's name without dashes (default: the field's name with ``-`` for ``_``).
    choices: the allowed values (of each element, for a tuple field).
    noun: what a value is called in the error for one outside ``choices``.
    greater_than: numbers (each element, for a tuple) must be greater than this.
    at_least: numbers must be at least this.
    below: numbers must be below this.
    repeatable: a tuple field whose flag is given once per element (else comma-separated).

  Returns:
    A ``dataclasses.field``.
  """
  metadata = {
    "help": help,
    "flag": flag,
    "choices": tuple(choices) if choices is not None else None,
    "noun": noun,
    "greater_than": greater_than,
    "at_least": at_least,
    "below": below,
    "repeatable": repeatable,
  }
  return dataclasses.field(default=default, metadata=metadata)


def validate(config: Any) -> None:
  """Checks every field of ``config`` against its :func:`option`'s checks.

  Raises:
    ConfigError: the first field that fails, naming it.
  """
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if value is None or not field.metadata:
      continue
    for item in value if isinstance(value, tuple) else (value,):
      problem = _problem(item, field.metadata)
      if problem:
        raise ConfigError(field.name, problem)


def _problem(value: Any, meta: dict[str, Any]) -> str | None:
  choices = meta["choices"]
  if choices is not None and value not in choices:
    return f"unknown {meta['noun']} {value}; choose from {', '.join(map(str, choices))}"
  if isinstance(value, bool) or not isinstance(value, int | float):
    return None
  if not math.isfinite(value):
    return f"must be finite, got {value}"
  if meta["greater_than"] is not None and not value > meta["greater_than"]:
    return f"must be greater than {meta['greater_than']:g}, got {value:g}"
  if meta["at_least"] is not None and not value >= meta["at_least"]:
    return f"must be at least {meta['at_least']:g}, got {value:g}"
  if meta["below"] is not None and not value < meta["below"]:
    return f"must be below {meta['below']:g}, got {value:g}"
  return None


def flag_name(field: dataclasses.Field) -> str:
  """The command-line flag of a field, with its dashes."""
  return "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))


def defaults(config_type: type, preset: str | None = None) -> dict[str, Any]:
  """Every field's default, or a named preset's: ``config_type.PRESETS[preset]`` over them.

  A configuration with presets (a class attribute ``PRESETS``, name to the fields it sets, and
  a ``protocol`` field naming the preset) is a benchmark with several published protocols:
  each preset is the defaults of one, and flags override them.

  Raises:
    ConfigError: an unknown preset.
  """
  values = {field.name: field.default for field in dataclasses.fields(config_type)}
  if preset is None:
    return values
  presets = getattr(config_type, "PRESETS", {})
  if preset not in presets:
    raise ConfigError("protocol", f"unknown protocol {preset}; choose from {', '.join(presets)}")
  return {**values, **presets[preset], "protocol": preset}


def add_flags(
  parser: argparse.ArgumentParser, config_type: type, preset: str | None = None
) -> None:
  """Adds one flag per field of the dataclass ``config_type`` to ``parser``.

  The flag's type follows the field's annotation: ``bool`` (a switch; its default must be
  False), ``int``, ``float``, ``str``, ``X | None``, and ``tuple[X, ...]`` (comma-separated,
  or once per element when ``repeatable``). The help shows the default: the field's, or the
  ``preset``'s (:func:`defaults`).
  """
  hints = typing.get_type_hints(config_type)
  preset_values = defaults(config_type, preset)
  for field in dataclasses.fields(config_type):
    kind, is_tuple = _kind(hints[field.name])
    meta = field.metadata
    help_text = meta.get("help", "")
    default = preset_values[field.name]
    if kind is bool:
      if default:
        raise TypeError(f"{field.name}: a bool flag must default to False")
      parser.add_argument(flag_name(field), dest=field.name, action="store_true", help=help_text)
      continue
    shown = ",".join(map(str, default)) if is_tuple and default else default
    help_text = f"{help_text} (default: {shown})" if default not in (None, ()) else help_text
    if is_tuple and meta.get("repeatable"):
      parser.add_argument(flag_name(field), dest=field.name, type=kind, action="append",
                          default=None, help=help_text)  # fmt: skip
    else:
      parse = _list_of(kind) if is_tuple else kind
      parser.add_argument(flag_name(field), dest=field.name, type=parse, default=default,
                          metavar=field.name.upper(), help=help_text)  # fmt: skip


def from_flags(config_type: type, flags: argparse.Namespace, preset: str | None = None) -> Any:
  """The configuration the parsed ``flags`` describe (after :func:`add_flags` with ``preset``).

  Raises:
    ConfigError: from the configuration's checks; its ``field`` names the flag's field.
  """
  preset_values = defaults(config_type, preset)
  values = {}
  for field in dataclasses.fields(config_type):
    value = getattr(flags, field.name)
    if isinstance(value, list):
      value = tuple(value)
    # An unrepeated repeatable flag leaves None: the default.
    repeatable_default = value is None and field.metadata.get("repeatable")
    values[field.name] = preset_values[field.name] if repeatable_default else value
  return config_type(**values)


def from_saved(config_type: type, saved: dict[str, Any], **overrides: Any) -> Any:
  """The ``config_type`` a report saved as ``dataclasses.asdict`` (JSON lists read back as
  tuples; names the type no longer has left out), with ``overrides`` on top.

  Raises:
    ConfigError: from the configuration's checks.
  """
  names = {field.name for field in dataclasses.fields(config_type)}
  values = {name: tuple(value) if isinstance(value, list) else value
            for name, value in saved.items() if name in names}  # fmt: skip
  return config_type(**{**values, **overrides})


def flags_to_rerun(config: Any) -> list[str]:
  """The flags that make ``config`` again: its preset's (``--protocol``) and each field that
  differs from that preset's defaults, in field order."""
  preset = getattr(config, "protocol", None) if hasattr(type(config), "PRESETS") else None
  preset_values = defaults(type(config), preset)
  default_preset = defaults(type(config)).get("protocol")
  words = [] if preset in (None, default_preset) else ["--protocol", preset]
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.name == "protocol" or value == preset_values[field.name]:
      continue
    flag = flag_name(field)
    if isinstance(value, bool):
      words.append(flag)
    elif field.metadata.get("repeatable"):
      words += [part for item in value for part in (flag, str(item))]
    elif isinstance(value, tuple):
      words += [flag, ",".join(map(str, value))]
    else:
      words += [flag, str(value)]
  return words


def rerun_command(
  script: str, config: Any, data_source: str, out_dir: str | os.PathLike, *, summaries: bool = True
) -> str:
  """The shell command that runs ``config`` again: ``python <script> --data … --out …``,
  ``--no-summaries`` without ``summaries``, and :func:`flags_to_rerun`'s flags; the same
  command with ``--resume`` continues it."""
  words = ["python", script, "--data", data_source, "--out", str(out_dir)]
  words += [] if summaries else ["--no-summaries"]
  return shlex.join(words + flags_to_rerun(config))


def _kind(annotation: Any) -> tuple[type, bool]:
  """``(element type, whether a tuple)`` of a field annotation; ``X | None`` counts as ``X``."""
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
  if typing.get_origin(annotation) is tuple:
    return typing.get_args(annotation)[0], True
  return annotation, False


def _list_of(kind: type):
  def parse(text: str) -> tuple[Any, ...]:
    try:
      return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    except ValueError as error:
      raise argparse.ArgumentTypeError(
        f"expected comma-separated {kind.__name__} values"
      ) from error

  parse.__name__ = f"list of {kind.__name__}"
  return parse
