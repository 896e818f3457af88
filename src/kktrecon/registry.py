"""A small registry: named entries of one kind, whose errors list what is registered.

Data sets, architectures and objectives each live in one (breaching's ``objective_lookup``,
opacus' accountant registry): a new kind is one :meth:`Registry.register` call in the module that
defines it, and nothing dispatches on names with if/elif.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """A mapping from names to entries, filled by :meth:`register` (item assignment replaces, for tests).

    Args:
        what: the argument the names are passed as (``"dataset"``), for messages.
        error: the exception class raised for unknown or duplicate names.

    Example:
        >>> colours = Registry("colour", KeyError)
        >>> colours.register("red", 1)
        1
        >>> colours.get_entry("blue")
        Traceback (most recent call last):
        ...
        KeyError: "Expected `colour` to be one of ['red']. Got 'blue'."
    """

    def __init__(self, what: str, error: Callable[[str], Exception]) -> None:
        self._what = what
        self._error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``, refusing to replace an existing one."""
        if name in self._entries:
            raise self._error(f"A {self._what} called {name!r} is already registered.")
        self._entries[name] = entry
        return entry

    def get_entry(self, name: str) -> T:
        """The entry called ``name``; an unknown name's error lists the registered ones."""
        if name not in self._entries:
            raise self._error(f"Expected `{self._what}` to be one of {sorted(self._entries)}. Got {name!r}.")
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self._what!r}: {sorted(self._entries)})"
