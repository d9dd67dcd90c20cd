"""The one reader of every YAML file the project takes: queries, targets, web config and the
alert thresholds. Size-capped, UTF-8, no aliases (no billion laughs), duplicate keys refused,
and every node's line kept so that an error can name the line and the key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from exporter.errors import ConfigError, describe, key_path
from exporter.files import MAX_FILE_BYTES, Unreadable, read_text

Loc = tuple[str | int, ...]
Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed YAML file: its data and the line each key path starts on."""

    path: Path
    data: object
    lines: Mapping[Loc, int]

    def error(self, loc: Loc, message: str) -> ConfigError:
        """A `ConfigError` at `loc`: `file:line: key.path: message`."""
        line = next(
            (self.lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in self.lines), None
        )
        return ConfigError.at(self.path, message, line=line, key=key_path(loc, self.data))

    def validate(self, model: type[Model], *, show_input: bool = False) -> Model:
        """The data as `model`, or a `ConfigError` naming the first problem's line and key
        (and, with `show_input`, the value refused: not for files that hold secrets)."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            errors = exc.errors()
            unknown = _misspelt(model, errors)
            if unknown is not None:
                raise self.error(*unknown) from None
            first = errors[0]
            message = describe(first, show_input=show_input)
            raise self.error(tuple(first["loc"]), message) from None


def _element(kind: object) -> object:
    """What a field holds: X for tuple[X, ...], list[X] or X | None."""
    while get_origin(kind) is not None:
        args = [a for a in get_args(kind) if a is not Ellipsis and a is not type(None)]
        if not args:
            return None
        kind = args[0]
    return kind


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the schema allows in the mapping at `loc`, or [] where it does not say."""
    kind: object = model
    for part in loc:
        if isinstance(part, int):  # an item of a list: _element already stepped inside
            continue
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return []
        field = kind.model_fields.get(part)
        kind = _element(field.annotation) if field is not None else None
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    return []


def _misspelt(
    model: type[BaseModel], errors: Sequence[Mapping[str, Any]]
) -> tuple[Loc, str] | None:
    """A key the schema does not know that is close to one it does ("intervall"): say so, and
    which key was meant, rather than only that the meant one is missing."""
    for error in errors:
        if error["type"] != "extra_forbidden":
            continue
        loc = tuple(error["loc"])
        key = str(loc[-1])
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        if close:
            return loc, f"unknown key {key!r}: did you mean {close[0]!r}?"
    return None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not supported", event.start_mark
            )
        return super().compose_node(parent, index)


def _lines(node: yaml.Node, loc: Loc, out: dict[Loc, int], path: Path) -> None:
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.tag != "tag:yaml.org,2002:str":
                # `1:`, `~:` or `true:` load as a number, None or a bool: every key of every
                # file here is a name, and a non-text key would be reported at its parent.
                raise ConfigError.at(
                    path,
                    f"a key must be text, got {key_node.value!r} (quote it if it is a name)",
                    line=line,
                    key=key_path(loc) if loc else None,
                )
            if key in seen:
                raise ConfigError.at(
                    path,
                    f"duplicate key (first at line {seen[key]})",
                    line=line,
                    key=key_path((*loc, key)),
                )
            seen[key] = line
            _lines(value_node, (*loc, key), out, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*loc, index), out, path)


def read_yaml(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> Document:
    """Read and parse `path`, or raise `ConfigError` saying what is wrong and where."""
    try:
        text = read_text(path, max_bytes=max_bytes)
    except Unreadable as exc:
        raise ConfigError.at(path, str(exc), line=exc.line) from None
    lines: dict[Loc, int] = {}
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = None
            if node is not None:
                _lines(node, (), lines, path)
                data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError.at(
            path, f"invalid YAML: {exc.problem or exc.context}", line=line
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError.at(path, f"invalid YAML: {type(exc).__name__}") from None
    return Document(path, data, lines)
