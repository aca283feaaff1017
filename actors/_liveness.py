"""The kernel data plane's liveness check for a client (NSM's ``KernelLivenessCheck``).

:func:`kernel_liveness` makes the check ``open_connection(..., liveness=...)`` polls: ICMP echo
from inside the client's namespace to every (src, dst) pair of one family in the connection's
IPContext (:func:`trionsm.kernel.check_liveness`). As in NSM, a connection whose mechanism is not
KERNEL, or whose context has no such pair, counts as alive; unlike NSM, a namespace that cannot
be entered (gone, not ours) counts as dead rather than failing the client: the wire cannot be
there either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trionsm.api.connection import Connection, Mechanism
from trionsm.errors import InvalidArgument, TrionsmError

from ._mechanisms import KERNEL

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from trionsm.kernel import Netlink

__all__ = ["choose_liveness", "kernel_liveness"]

_PACKETS = 4  # sdk-kernel's KernelLivenessCheck: 4 echoes per pair, spread over the timeout


def kernel_liveness(
    netns: str,
    *,
    timeout: float = 1.0,
    packets: int = _PACKETS,
    netlink: Netlink | None = None,
) -> Callable[[Connection], Awaitable[bool]]:
    """A liveness check for KERNEL connections whose client end lives in ``netns``.

    Args:
        netns: the client's namespace as an ``inodeURL`` (what ``open_connection(netns=...)``
            puts in its KERNEL mechanism).
        timeout: seconds the echoes of one check are spread over (cmd-nsc's 1 s); the check
            returns as soon as every pair has answered once.
        packets: echoes per pair.
        netlink: the kernel executor for the pings; None: the Trio run's shared one.

    Returns:
        ``async (connection) -> bool``: False when any pair got no reply in ``timeout``.
    """

    async def check(connection: Connection) -> bool:
        from trionsm.kernel import check_liveness

        mechanism = connection.mechanism
        if mechanism is None or mechanism.type != KERNEL:
            return True
        context = connection.context.ip_context if connection.context is not None else None
        try:
            return await check_liveness(
                netns, context, timeout=timeout, packets=packets, netlink=netlink
            )
        except TrionsmError:
            return False

    return check


def choose_liveness(
    liveness: Callable[[Connection], Awaitable[bool]] | bool | None,
    preference: Mechanism,
    *,
    netns: str | None,
    timeout: float,
    netlink: Netlink | None,
) -> Callable[[Connection], Awaitable[bool]] | None:
    """The check a client runs: ``liveness`` itself when it is one; :func:`kernel_liveness` of
    ``netns`` for None or True and a KERNEL ``preference`` with a namespace; else none.

    Raises:
        InvalidArgument: ``liveness=True`` without a KERNEL mechanism and a namespace.
    """
    if liveness is False:
        return None
    if liveness is not None and liveness is not True:
        return liveness
    if preference.type == KERNEL and netns is not None:
        return kernel_liveness(netns, timeout=timeout, netlink=netlink)
    if liveness is True:
        raise InvalidArgument("liveness=True needs a kernel:// connection and its netns")
    return None
