"""Reading YAML safely, and finding where in the file a JSON pointer points.

PyYAML's safe loader (with libyaml when present) parses; this module builds the Python
values itself, because the stock constructors let through what a fleet file must refuse:

- a key written twice in one mapping is an error, not a silent overwrite;
- an alias costs the size of what it expands to, and the whole file may expand by at most
  `MAX_ALIAS_NODES` nodes, so a "billion laughs" file fails at once instead of exhausting
  memory; an alias inside its own anchor is refused;
- only the core YAML types are built (strings, numbers, booleans, null; timestamps stay
  strings); any other tag, and merge keys, are refused;
- files larger than a bound and nesting deeper than `MAX_DEPTH` are refused.

Values are built in one of two ways, which agree on every file the first one accepts:

- straight from the parser's events, keeping no node tree: the way nearly every file is
  read, since a node tree costs more to build and to free than the values themselves;
- from the composed node tree, which knows where each value was written. The event
  builder hands a file over to it as soon as it meets anything it would have to refuse or
  report (a tag, a merge key, a key written twice, a bound reached, broken YAML), so
  problems are only ever found, and positioned, by the node tree.

An error found later, by the schema or by the cross-reference checks, is placed by
composing the node tree then, from the bytes the document keeps.

Mapping keys and the strings in lists are interned: they are the names a fleet repeats
(roles, scopes, tenants, resources), and one object per name keeps a compiled revision
smaller and lets a decision's set and dict lookups compare names by identity.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from sys import intern
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "Document",
    "Problem",
    "escape_pointer",
    "join_pointer",
    "parse_yaml",
]

MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_ALIAS_NODES = 100_000
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _TIMESTAMP = _TAG + "str", _TAG + "null", _TAG + "timestamp"
_SEQ, _MAP, _MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"
_BaseLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# The safe schema's implicit resolvers, by the first character of a plain scalar.
_IMPLICIT: dict[str, list[tuple[str, re.Pattern[str]]]] = yaml.SafeLoader.yaml_implicit_resolvers


def _implicit_tag(value: str) -> str:
    for tag, pattern in _IMPLICIT.get(value[:1], ()):
        if pattern.match(value):
            return tag
    return _STR


class _Loader(_BaseLoader):  # type: ignore[misc]
    """The safe loader, with tag resolution cut to what the safe schema needs.

    PyYAML's resolver also walks path resolvers on every node, which the safe loader has
    none of; skipping that walk halves the time libyaml's composer spends in Python.
    """

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            return _implicit_tag(value) if implicit[0] else _STR
        return _SEQ if kind is yaml.SequenceNode else _MAP


_SCALARS = SafeConstructor()
_CONSTRUCTORS: dict[str, Callable[[yaml.ScalarNode], Any]] = {
    _TAG + "bool": _SCALARS.construct_yaml_bool,
    _TAG + "int": _SCALARS.construct_yaml_int,
    _TAG + "float": _SCALARS.construct_yaml_float,
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input file, where it is, and what JSON pointer names it."""

    file: str
    line: int
    column: int
    pointer: str
    message: str

    def format(self) -> str:
        return (
            f"{self.file}:{self.line}:{self.column}: error: {self.message} "
            f"(at {self.pointer or '/'})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "pointer": self.pointer,
            "message": self.message,
        }


def escape_pointer(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def join_pointer(*parts: str | int) -> str:
    return "".join("/" + escape_pointer(part) for part in parts)


def _split_pointer(pointer: str) -> list[str]:
    if not pointer:
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


@dataclass
class Document:
    """A parsed file: its values, and its node tree for positions, composed from
    `content` the first time a position is asked for when parsing kept none."""

    name: str
    data: Any
    root: yaml.Node | None = field(default=None, repr=False)
    content: bytes | None = field(default=None, repr=False)

    def problem(self, pointer: str, message: str) -> Problem:
        line, column = self.position(pointer)
        return Problem(self.name, line, column, pointer, message)

    def position(self, pointer: str) -> tuple[int, int]:
        """Line and column (1-based) of what the pointer names, or of the nearest thing
        above it that exists; a mapping entry is placed at its key."""
        node = self._tree()
        if node is None:
            return 1, 1
        mark = node.start_mark
        for part in _split_pointer(pointer):
            child = _child(node, part)
            if child is None:
                break
            mark, node = child
        return mark.line + 1, mark.column + 1

    def _tree(self) -> yaml.Node | None:
        if self.root is None and self.content is not None:
            content, self.content = self.content, None
            try:
                self.root = _compose(content)
            except yaml.YAMLError:
                # Not reached for content that was parsed once already; a document that
                # cannot be composed places everything at its start.
                self.root = None
        return self.root


def _child(node: yaml.Node, part: str) -> tuple[yaml.Mark, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return key.start_mark, value
        return None
    if isinstance(node, yaml.SequenceNode) and part.isdigit():
        index = int(part)
        if index < len(node.value):
            item = node.value[index]
            return item.start_mark, item
    return None


class _Refused(Exception):
    """Building stopped at `node`; `parent` and `key` say where it was reached from, which
    for an alias is not where the node was defined."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message
        self.parent: yaml.Node | None = None
        self.key: str | int = ""

    def reached_from(self, parent: yaml.Node, key: str | int) -> None:
        if self.parent is None:
            self.parent, self.key = parent, key


class _Builder:
    """Turns a node tree into plain values, enforcing the rules in the module docstring.

    Problems record the node they concern; its pointer is worked out only when the
    problem is reported, so a valid file pays nothing for positions.
    """

    def __init__(self) -> None:
        self.alias_nodes = 0
        # (node, the container it was reached from and under which key, or None, message)
        self.problems: list[tuple[yaml.Node, tuple[yaml.Node, str | int] | None, str]] = []
        # id(collection) -> (value, nodes it stands for, levels below it); scalars are only
        # remembered, to count aliases to them.
        self._built: dict[int, tuple[Any, int, int]] = {}
        self._scalars: set[int] = set()
        self._open: set[int] = set()

    def build(self, node: yaml.Node, depth: int) -> tuple[Any, int, int]:
        """The value of the node, how many nodes it stands for, and how deep it goes."""
        key = id(node)
        if type(node) is yaml.ScalarNode:
            if key in self._scalars:
                self._count_alias(node, 1)
            else:
                self._scalars.add(key)
            return _scalar_value(node), 1, 0
        if key in self._open:
            raise _Refused(node, "an alias refers to the node that contains it")
        built = self._built.get(key)
        if built is not None:
            _, size, height = built
            self._count_alias(node, size)
            # An alias puts its whole subtree at this depth, which may be deeper than
            # where the anchor was defined.
            if depth + height > MAX_DEPTH:
                raise _Refused(node, f"nesting is deeper than {MAX_DEPTH} levels")
            return built
        if depth > MAX_DEPTH:
            raise _Refused(node, f"nesting is deeper than {MAX_DEPTH} levels")

        self._open.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                built = self._mapping(node, depth)
            elif isinstance(node, yaml.SequenceNode):
                built = self._sequence(node, depth)
            else:
                raise _Refused(node, "unsupported YAML node")
        finally:
            self._open.discard(key)
        self._built[key] = built
        return built

    def _count_alias(self, node: yaml.Node, size: int) -> None:
        self.alias_nodes += size
        if self.alias_nodes > MAX_ALIAS_NODES:
            raise _Refused(
                node,
                f"aliases expand to more than {MAX_ALIAS_NODES} nodes; "
                "write the repeated parts out or reuse less",
            )

    def _sequence(self, node: yaml.SequenceNode, depth: int) -> tuple[Any, int, int]:
        if node.tag != _SEQ:
            raise _Refused(node, f"the tag {node.tag!r} is not allowed here")
        items: list[Any] = []
        size, height = 1, 0
        build, scalars = self.build, self._scalars
        for index, child in enumerate(node.value):
            # Plain strings, the bulk of any fleet, without a call.
            if type(child) is yaml.ScalarNode and child.tag == _STR and id(child) not in scalars:
                scalars.add(id(child))
                items.append(intern(child.value))
                size += 1
                continue
            try:
                value, child_size, child_height = build(child, depth + 1)
            except _Refused as refused:
                refused.reached_from(node, index)
                raise
            items.append(value)
            size += child_size
            if child_height >= height:
                height = child_height + 1
        return items, size, height

    def _mapping(self, node: yaml.MappingNode, depth: int) -> tuple[Any, int, int]:
        if node.tag != _MAP:
            raise _Refused(node, f"the tag {node.tag!r} is not allowed here")
        mapping: dict[str, Any] = {}
        size, height = 1, 0
        build, scalars = self.build, self._scalars
        for key_node, value_node in node.value:
            if type(key_node) is not yaml.ScalarNode:
                raise _Refused(key_node, "a mapping key must be a plain scalar")
            if key_node.tag == _MERGE:
                raise _Refused(key_node, "merge keys (<<) are not supported; write the keys out")
            name = intern(key_node.value)
            if name in mapping:
                self.problems.append(
                    (key_node, (node, name), f"duplicate key {name!r} in this mapping")
                )
                continue
            if (
                type(value_node) is yaml.ScalarNode
                and value_node.tag == _STR
                and id(value_node) not in scalars
            ):
                scalars.add(id(value_node))
                mapping[name] = value_node.value
                size += 1
                continue
            try:
                value, child_size, child_height = build(value_node, depth + 1)
            except _Refused as refused:
                refused.reached_from(node, name)
                raise
            mapping[name] = value
            size += child_size
            if child_height >= height:
                height = child_height + 1
        return mapping, size, height


def _scalar_value(node: yaml.ScalarNode) -> Any:
    tag = node.tag
    if tag in (_STR, _TIMESTAMP):
        return node.value
    if tag == _NULL:
        return None
    construct = _CONSTRUCTORS.get(tag)
    if construct is None:
        raise _Refused(node, f"the tag {tag!r} is not allowed; use plain values")
    try:
        return construct(node)
    except (ValueError, KeyError, IndexError) as exc:
        # An explicit tag on a value it cannot hold (`!!int x`), or an integer past
        # Python's digit limit; the value itself is not repeated.
        raise _Refused(node, f"not a valid {tag.removeprefix(_TAG)}") from exc


class _Unusual(Exception):
    """The event builder met something it leaves to the node tree, which builds the same
    values from it or finds the problem and where it is."""


# Stands, among the anchors, for a collection whose end has not been read yet.
_OPEN: Any = object()


def _values_from_events(content: bytes) -> dict[str, Any]:
    """The values of a file whose root is a plain mapping, built from the parser's events.

    The node builder's accounting is kept as it goes (how many nodes each collection
    stands for, how deep it goes, how much aliases expand), so that every bound holds
    exactly where `_Builder` holds it. Whatever that builder would refuse or report raises
    `_Unusual`, and YAML errors are let through: either way, the caller reads the file
    again through the node tree.
    """
    loader = _Loader(content)
    get_event = loader.get_event
    try:
        # The stream's start, the document's start, then the root.
        get_event()
        get_event()
        event = get_event()
        if type(event) is not MappingStartEvent or event.tag or event.anchor:
            raise _Unusual
        root: dict[str, Any] = {}
        container: Any = root
        # The collection being read: whether it is a mapping, the key its next value goes
        # under, how many nodes it stands for so far, how deep it goes, its anchor. The
        # `stack` holds the same of every collection around it.
        is_mapping, key, size, height, anchor = True, None, 1, 0, None
        stack: list[tuple[Any, bool, str | None, int, int, str | None]] = []
        anchors: dict[str, Any] = {}
        alias_nodes = 0

        while True:
            event = get_event()
            kind = type(event)
            if kind is ScalarEvent:
                value = event.value
                if event.tag is not None:
                    raise _Unusual
                if is_mapping and key is None:
                    # A key written twice is reported and a merge key refused by the node
                    # tree, which also charges aliases to an anchored key in its own way.
                    if (
                        value in container
                        or (value == "<<" and event.implicit[0])
                        or event.anchor is not None
                    ):
                        raise _Unusual
                    key = intern(value)
                    continue

                size += 1
                if event.implicit[0] and value[:1] in _IMPLICIT:
                    value, typed = _plain_value(value)
                    if typed and not height:
                        height = 1
                if event.anchor is not None:
                    if event.anchor in anchors:
                        raise _Unusual
                    anchors[event.anchor] = (value, 1, 0)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                # A collection as a key is refused by the node tree, as is one too deep.
                if event.tag is not None or (is_mapping and key is None):
                    raise _Unusual
                if len(stack) >= MAX_DEPTH:
                    raise _Unusual

                stack.append((container, is_mapping, key, size, height, anchor))
                anchor = event.anchor
                if anchor is not None:
                    if anchor in anchors:
                        raise _Unusual
                    anchors[anchor] = _OPEN
                is_mapping = kind is MappingStartEvent
                container = {} if is_mapping else []
                key, size, height = None, 1, 0
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                if not stack:
                    break
                value, value_size, value_height = container, size, height
                if anchor is not None:
                    anchors[anchor] = (value, value_size, value_height)
                container, is_mapping, key, size, height, anchor = stack.pop()
                size += value_size
                if value_height >= height:
                    height = value_height + 1
            elif kind is AliasEvent:
                if is_mapping and key is None:
                    raise _Unusual
                # Not defined yet, or still open: an alias inside its own anchor.
                anchored = anchors.get(event.anchor, _OPEN)
                if anchored is _OPEN:
                    raise _Unusual
                value, value_size, value_height = anchored
                # An alias costs what it expands to, and puts all of it at this depth.
                alias_nodes += value_size
                if alias_nodes > MAX_ALIAS_NODES or len(stack) + 1 + value_height > MAX_DEPTH:
                    raise _Unusual

                size += value_size
                if value_height >= height:
                    height = value_height + 1
            else:
                raise _Unusual

            if is_mapping:
                container[key] = value
                key = None
            elif type(value) is str:
                container.append(intern(value))
            else:
                container.append(value)

        if type(get_event()) is not DocumentEndEvent or type(get_event()) is not StreamEndEvent:
            raise _Unusual
        return root
    finally:
        loader.dispose()


def _plain_value(value: str) -> tuple[Any, bool]:
    """A plain scalar's value, and whether it is of a type other than string: the node
    builder counts those as one level deeper than strings, and so must the event builder
    for its depth bound to agree."""
    tag = _implicit_tag(value)
    if tag == _STR:
        return value, False
    try:
        return _scalar_value(yaml.ScalarNode(tag, value)), True
    except _Refused as refused:
        raise _Unusual from refused


def _pointer_of(root: yaml.Node, target: yaml.Node) -> str:
    """The JSON pointer of `target` in the tree: the first path that reaches it, placing a
    mapping key at the entry it names."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, pointer = stack.pop()
        if node is target:
            return pointer
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = f"{pointer}/{escape_pointer(getattr(key, 'value', ''))}"
                if key is target:
                    return child
                stack.append((value, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{pointer}/{index}") for index, item in enumerate(node.value))
    return ""


def parse_yaml(name: str, content: bytes | str) -> tuple[Document, list[Problem]]:
    """Parse one YAML file; the document is usable only when no problem came back."""
    document = Document(name, None)
    if isinstance(content, str):
        text = content
        try:
            content = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = text.count("\n", 0, exc.start) + 1
            column = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
            return document, [Problem(name, line, column, "", "the text is not valid Unicode")]
    size = len(content)
    if size > MAX_FILE_BYTES:
        return document, [
            Problem(name, 1, 1, "", f"the file is {size} bytes; the limit is {MAX_FILE_BYTES}")
        ]

    try:
        document.data = _values_from_events(content)
    except (_Unusual, yaml.YAMLError):
        return _parse_nodes(document, content)
    document.content = content
    return document, []


def _parse_nodes(document: Document, content: bytes) -> tuple[Document, list[Problem]]:
    """Parse through the node tree: what finds every problem and places it."""
    name = document.name
    try:
        root = _compose(content)
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(content, exc.position)
        if "UTF-8" in str(exc.reason) or "utf-8" in str(exc.reason):
            message = "the file is not UTF-8 text"
        else:
            code = exc.character if isinstance(exc.character, int) else ord(exc.character)
            message = f"YAML: the character #x{code:04x} is not allowed"
        return document, [Problem(name, line, column, "", message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        reason = exc.problem or exc.context or "not valid YAML"
        return document, [Problem(name, line, column, "", f"YAML: {reason}")]
    except yaml.YAMLError:
        return document, [Problem(name, 1, 1, "", "YAML: the file cannot be parsed")]

    document.root = root
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _TAG + "null"):
        return document, [Problem(name, 1, 1, "", "the file is empty")]

    builder = _Builder()
    try:
        document.data, _, _ = builder.build(root, 0)
    except _Refused as refused:
        place = (refused.parent, refused.key) if refused.parent is not None else None
        builder.problems.append((refused.node, place, refused.message))
    problems = []
    for node, place, message in builder.problems:
        if place is None:
            pointer = _pointer_of(root, node)
        else:
            pointer = f"{_pointer_of(root, place[0])}/{escape_pointer(place[1])}"
        mark = node.start_mark
        problems.append(Problem(name, mark.line + 1, mark.column + 1, pointer, message))
    return document, problems


def _line_column(content: bytes, position: int) -> tuple[int, int]:
    before = content[:position]
    line = before.count(b"\n") + 1
    column = len(before) - (before.rfind(b"\n") + 1) + 1
    return line, column


def _compose(content: bytes | str) -> yaml.Node | None:
    loader = _Loader(content)
    try:
        root: yaml.Node | None = loader.get_single_node()
        return root
    finally:
        loader.dispose()
