"""Exception-group helpers: Trio nurseries are strict, our contracts raise single errors."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["lone_exception"]


def lone_exception(
    group: BaseExceptionGroup[Any], expected: BaseException | None = None
) -> BaseException | None:
    """The one exception ``group`` carries besides ``trio.Cancelled``, or None if there is not one.

    With ``expected`` (the error a nursery body raised, compared by identity), return it only if the
    rest of the group is Cancelled. Without it, a group of nothing but Cancelled yields None (let it
    propagate to the scope that cancelled it) and nested groups are flattened.
    """
    if expected is not None:
        matched, rest = group.split(lambda exc: exc is expected)
        if matched is None:
            return None
        if rest is not None and rest.split(trio.Cancelled)[1] is not None:
            return None
        return expected
    rest = group.split(trio.Cancelled)[1]
    if rest is None:
        return None
    leaves = _leaves(rest)
    return leaves[0] if len(leaves) == 1 else None


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
