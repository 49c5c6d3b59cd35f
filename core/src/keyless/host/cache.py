"""One per-process cache for the hosts' identities (and anything built per process)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["ProcessCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ProcessCache(Generic[K, V]):
    """Values built once per key in this process, at most ``size`` of them (the least recently
    used go first).

    Fork-safe: used after a fork, it starts empty in the child (a forked PyTorch DataLoader
    worker builds its own identity, never shares the parent's HTTP pools or locks). Pickling
    or deep-copying gives an empty cache, and two caches compare equal, so an object holding
    one (a Prefect block) keeps its value semantics: credentials never cross a process
    boundary.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._values: OrderedDict[K, V] = OrderedDict()

    def __reduce__(self) -> tuple[type[ProcessCache[K, V]], tuple[int]]:
        return (type(self), (self.size,))

    def __eq__(self, other: object) -> bool:  # a cache is not state
        return isinstance(other, ProcessCache)

    def __hash__(self) -> int:
        return 0

    def _this_process(self) -> None:  # call with the lock held
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._values = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            self._this_process()
            return len(self._values)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def values(self) -> list[V]:
        """This process's values now, least recently used first."""
        with self._lock:
            self._this_process()
            return list(self._values.values())

    def get(self, key: K, build: Callable[[], V]) -> tuple[V, bool]:
        """The value for ``key`` and whether this call built it. ``build`` runs outside the
        lock (it may call back in); if two threads race, the first value stored wins and the
        other is dropped before it is used."""
        with self._lock:
            self._this_process()
            found = self._values.get(key)
            if found is not None:
                self._values.move_to_end(key)
                return found, False
        built = build()
        with self._lock:
            self._this_process()
            found = self._values.setdefault(key, built)
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return found, found is built
