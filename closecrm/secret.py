"""A wrapper that keeps the Close API key out of reprs, logs and exception messages."""

from __future__ import annotations


class ApiKey:
    """Holds the key; ``str()``/``repr()`` never show it. Call ``reveal()`` only to build auth."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = (value or "").strip()
        if not value:
            raise ValueError("the Close API key is empty")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey(****)"

    __str__ = __repr__

    def __reduce__(self):  # pickling (e.g. into a Beam DoFn) must not be the way a key travels
        raise TypeError("ApiKey is not picklable; pass a KeySource and read the key on the worker")
