"""Job files read as plain data: YAML's safe subset, no key given twice, and aliases
that cannot multiply a small file into millions of nodes ("billion laughs")."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# A job file holds a few hundred values; anything that expands past this is a bomb.
MAX_NODES = 100_000
MAX_BYTES = 1_000_000


class JobYamlError(ValueError):
    """A job file that parses as YAML but is refused; the message names why."""


class _NoDuplicates(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a job file's typo then decides
    the job. Merge keys (``<<: *base``) may still be overridden: only keys written in the
    same mapping count."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise JobYamlError(
                    f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                    f"{line}): keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def expanded_size(node: Node, limit: int = MAX_NODES) -> int:
    """Nodes the document would hold with every alias expanded (each shared node counted
    once per use, computed once per node); ``JobYamlError`` beyond ``limit``."""
    sizes: dict[int, int] = {}

    def size(n: Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a recursive alias counts once while it is being measured
        total = 1
        if isinstance(n, SequenceNode):
            total += sum(size(child) for child in n.value)
        elif isinstance(n, MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        if total > limit:
            raise JobYamlError(
                f"its aliases expand to more than {limit:,} values (nested aliases, a "
                "'billion laughs' file): write the values out"
            )
        sizes[id(n)] = total
        return total

    return size(node)


def load(text: str) -> Any:
    """The document in ``text`` (None when empty); ``yaml.YAMLError`` for bad syntax,
    ``JobYamlError`` for a key given twice or aliases that expand too far."""
    loader = _NoDuplicates(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
