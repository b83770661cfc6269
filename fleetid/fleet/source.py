"""Reading YAML safely, and finding where in the file a JSON pointer points.

PyYAML's safe loader (with libyaml when present) parses; this module builds the Python
values itself from the composed node tree, because the stock constructors let through what
a fleet file must refuse:

- a key written twice in one mapping is an error, not a silent overwrite;
- an alias costs the size of what it expands to, and the whole file may expand by at most
  `MAX_ALIAS_NODES` nodes, so a "billion laughs" file fails at once instead of exhausting
  memory; an alias inside its own anchor is refused;
- only the core YAML types are built (strings, numbers, booleans, null; timestamps stay
  strings); any other tag, and merge keys, are refused;
- files larger than a bound and nesting deeper than `MAX_DEPTH` are refused.

The node tree is kept beside the values so that an error found later, by the schema or by
the cross-reference checks, can be reported at the line and column it concerns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

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

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
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
    """A parsed file: its values, and its node tree for positions."""

    name: str
    data: Any
    root: yaml.Node | None = field(default=None, repr=False)

    def problem(self, pointer: str, message: str) -> Problem:
        line, column = self.position(pointer)
        return Problem(self.name, line, column, pointer, message)

    def position(self, pointer: str) -> tuple[int, int]:
        """Line and column (1-based) of what the pointer names, or of the nearest thing
        above it that exists; a mapping entry is placed at its key."""
        node = self.root
        if node is None:
            return 1, 1
        mark = node.start_mark
        for part in _split_pointer(pointer):
            child = _child(node, part)
            if child is None:
                break
            mark, node = child
        return mark.line + 1, mark.column + 1


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
    def __init__(self, node: yaml.Node, pointer: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.pointer = pointer
        self.message = message


class _Builder:
    """Turns a node tree into plain values, enforcing the rules in the module docstring."""

    def __init__(self) -> None:
        self.alias_nodes = 0
        self.problems: list[tuple[yaml.Node, str, str]] = []
        # id(node) -> (value, nodes it stands for, levels below it)
        self._built: dict[int, tuple[Any, int, int]] = {}
        self._open: set[int] = set()

    def build(self, node: yaml.Node, pointer: str, depth: int) -> tuple[Any, int, int]:
        """The value of the node, how many nodes it stands for, and how deep it goes."""
        key = id(node)
        if key in self._open:
            raise _Refused(node, pointer, "an alias refers to the node that contains it")
        if key in self._built:
            value, size, height = self._built[key]
            self.alias_nodes += size
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise _Refused(
                    node,
                    pointer,
                    f"aliases expand to more than {MAX_ALIAS_NODES} nodes; "
                    "write the repeated parts out or reuse less",
                )
            # An alias puts its whole subtree at this depth, which may be deeper than
            # where the anchor was defined.
            if depth + height > MAX_DEPTH:
                raise _Refused(node, pointer, f"nesting is deeper than {MAX_DEPTH} levels")
            return value, size, height
        if depth > MAX_DEPTH:
            raise _Refused(node, pointer, f"nesting is deeper than {MAX_DEPTH} levels")

        self._open.add(key)
        try:
            built = self._build_new(node, pointer, depth)
        finally:
            self._open.discard(key)
        self._built[key] = built
        return built

    def _build_new(self, node: yaml.Node, pointer: str, depth: int) -> tuple[Any, int, int]:
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, pointer), 1, 0
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, pointer, "seq")
            items: list[Any] = []
            size, height = 1, 0
            for index, child in enumerate(node.value):
                value, child_size, child_height = self.build(
                    child, f"{pointer}/{index}", depth + 1
                )
                items.append(value)
                size += child_size
                height = max(height, child_height + 1)
            return items, size, height
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, pointer, depth)
        raise _Refused(node, pointer, "unsupported YAML node")

    def _mapping(self, node: yaml.MappingNode, pointer: str, depth: int) -> tuple[Any, int, int]:
        self._check_tag(node, pointer, "map")
        mapping: dict[str, Any] = {}
        size, height = 1, 0
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(key_node, pointer, "a mapping key must be a plain scalar")
            if key_node.tag == _TAG + "merge":
                raise _Refused(
                    key_node, pointer, "merge keys (<<) are not supported; write the keys out"
                )
            name = key_node.value
            child_pointer = f"{pointer}/{escape_pointer(name)}"
            if name in mapping:
                self.problems.append(
                    (key_node, child_pointer, f"duplicate key {name!r} in this mapping")
                )
                continue
            value, child_size, child_height = self.build(value_node, child_pointer, depth + 1)
            mapping[name] = value
            size += child_size
            height = max(height, child_height + 1)
        return mapping, size, height

    def _check_tag(self, node: yaml.Node, pointer: str, kind: str) -> None:
        if node.tag != _TAG + kind:
            raise _Refused(node, pointer, f"the tag {node.tag!r} is not allowed here")

    def _scalar(self, node: yaml.ScalarNode, pointer: str) -> Any:
        tag = node.tag
        if tag == _TAG + "str" or tag == _TAG + "timestamp":
            return node.value
        if tag == _TAG + "null":
            return None
        construct = _CONSTRUCTORS.get(tag)
        if construct is None:
            raise _Refused(node, pointer, f"the tag {tag!r} is not allowed; use plain values")
        try:
            return construct(node)
        except (ValueError, KeyError, IndexError) as exc:
            # An explicit tag on a value it cannot hold (`!!int x`), or an integer past
            # Python's digit limit; the value itself is not repeated.
            kind = tag.removeprefix(_TAG)
            raise _Refused(node, pointer, f"not a valid {kind}") from exc


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
        document.data, _, _ = builder.build(root, "", 0)
    except _Refused as refused:
        builder.problems.append((refused.node, refused.pointer, refused.message))
    problems = [
        Problem(name, node.start_mark.line + 1, node.start_mark.column + 1, pointer, message)
        for node, pointer, message in builder.problems
    ]
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
