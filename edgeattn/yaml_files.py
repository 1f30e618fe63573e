"""Reading the YAML files users write (``edgeattn qat`` configs, device profiles).

PyYAML's ``safe_load`` lets a repeated key silently replace the first one (``epochs: 1`` ... ``epochs: 20``), so
these files are read with a loader that refuses repeated keys, and the text must be UTF-8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises on a mapping key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # '? [a, b]': PyYAML would fail the same way later, with a bare TypeError
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key is a list or a mapping", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text``, refusing repeated mapping keys (``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """'not valid YAML (line L, column C): problem' for a parse error."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"not valid YAML{where}: {problem}"


def read_utf8(path: Path) -> str | None:
    """The text of ``path``, or ``None`` if it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
