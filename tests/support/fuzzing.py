"""Hypothesis strategies shared by the hosts' property tests: any JSON-like value (a chosen
secret among the leaves, so a test can check it never shows in an error) and a known-good
document mutated at a few chosen paths (a field dropped or replaced by any value)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st


def json_values(secret: str) -> st.SearchStrategy[Any]:
    """Any JSON-like value up to a few levels deep; ``secret`` is one of the leaves."""
    leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
              | st.text(max_size=30) | st.just(secret))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=3),
                        max_leaves=10)


def mutated(draw: st.DrawFn, good: dict[str, Any], paths: Sequence[tuple[str, ...]],
            values: st.SearchStrategy[Any], *, at_most: int = 3) -> dict[str, Any]:
    """A deep copy of ``good`` with 1..``at_most`` of ``paths`` dropped or set to a drawn value
    (missing parents are created; a path through a non-mapping is left alone)."""
    document = copy.deepcopy(good)
    for _ in range(draw(st.integers(1, at_most))):
        path = draw(st.sampled_from(list(paths)))
        parent: Any = document
        for key in path[:-1]:
            if not isinstance(parent, dict):
                break
            parent = parent.setdefault(key, {})
        if isinstance(parent, dict):
            if draw(st.booleans()):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(values)
    return document
