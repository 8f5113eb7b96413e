"""Reading a config file into plain data, strictly: whatever the bytes, the
result is a document or a :class:`ConfigError` naming the file and the place.

The rules, and why:

* **UTF-8 only.** Other bytes are an error naming the byte offset (and line).
* **YAML 1.2 scalars** (the core schema), not PyYAML's YAML 1.1: only
  ``true``/``false`` are booleans (``yes``, ``no``, ``on``, ``off`` are
  strings), ``1:30`` is a string (YAML 1.1 reads it as the sexagesimal 90),
  ``0755`` is the decimal 755 (octal is ``0o755``), and dates stay strings.
  A value then either means what it looks like or fails validation with a
  message naming its field (``timing.leaseDuration: must be seconds or a
  string like '250ms' ..., got '1:30'``); nothing changes meaning silently.
  This is also how Kubernetes' own YAML library (go-yaml v3) reads scalars.
* **No aliases** (``*name``). A config is short and has no need of them, and
  refusing them makes an alias bomb ("billion laughs": a few hundred bytes that
  expand to gigabytes) impossible, instead of bounding its expanded size after
  the fact. Merge keys (``<<``) go with them.
* **No duplicate keys**: the second one would silently win; the error names
  the key and both lines.
* **Bounded nesting** (:data:`MAX_DEPTH` levels, checked while the document is
  composed), so a deeply nested file is an error, never a ``RecursionError``.
* **Bounded size** (:data:`MAX_BYTES`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from egressd.core.errors import ConfigError, Problem, clip

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted; egressd's schema needs 6."""

MAX_BYTES = 1 << 20
"""Largest config file accepted (1 MiB); a real one is a few kB."""

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the rules of the module docstring."""

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}  # noqa: RUF012 — PyYAML's class attribute

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(
                None,
                None,
                f"aliases are not accepted in egressd configs (found *{event.anchor}); write the value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # unhashable: the base class says so with its mark
                break
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {clip(repr(key), 80)} (lines {first} and {line}); the second would silently win",
                    key_node.start_mark,
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:  # an explicit tag on a bad scalar: !!int x
            raise ConstructorError(
                None, None, f"cannot read this {node.tag} value: {clip(str(exc), 120)}", node.start_mark
            ) from exc

    def construct_yaml_int_12(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text)


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
    ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
    ("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789.")),
):
    ConfigLoader.add_implicit_resolver(_tag, _pattern, _first)
ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int_12)


def _line_of(text: bytes, offset: int) -> int:
    return text.count(b"\n", 0, offset) + 1


def read_config(path: str) -> Any:
    """The document in the file at ``path`` (None if empty), or ConfigError."""
    try:
        raw = Path(path).read_bytes()[: MAX_BYTES + 1]
    except OSError as exc:
        raise ConfigError([Problem("file", f"cannot read {path}: {exc.strerror or exc}")], path) from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError([Problem("file", f"is larger than {MAX_BYTES} bytes; a config is a few kB")], path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                Problem(
                    "file",
                    f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {_line_of(raw, exc.start)})",
                )
            ],
            path,
        ) from None
    return parse_yaml(text, path)


def parse_yaml(text: str, source: str = "config") -> Any:
    """The YAML document in ``text`` (None if empty), or ConfigError."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 — ConfigLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("file", _yaml_message(exc, text))], source) from None
    except RecursionError:  # the depth bound is meant to make this unreachable; never a traceback
        raise ConfigError([Problem("file", "nested too deeply")], source) from None


def _yaml_message(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, most controls)
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"not valid YAML at line {line}, column {column}: {exc.reason} (#x{char:04x})"
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"not valid YAML{at}: {problem}"
