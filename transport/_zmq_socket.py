"""pyzmq driven natively from Trio: readiness through ``zmq.FD``, one owner task per socket.

A libzmq socket is not thread-safe and its ``zmq.FD`` is edge-triggered: the descriptor becomes
readable when the socket *may* have changed state, and any operation on the socket (a send, a
receive, reading ``ZMQ_EVENTS``) can consume that signal. So:

* exactly one task (the socket's *owner*) performs operations on a socket, always non-blocking;
* before sleeping on the descriptor, the owner reads ``ZMQ_EVENTS`` and drains whatever is ready:
  a signal consumed by its own operations is then never lost;
* only one task may wait on a descriptor (Trio raises ``BusyResourceError`` otherwise).

:class:`TrioSocket` gives single-task owners (the ZAP handler, tests) awaitable ``recv_multipart``
and ``send_multipart``. Owners that also serve a mailbox (the client and server actors) run
:func:`watch` in a helper task instead: it waits on the descriptor and posts a :class:`Readable`
token to the owner's mailbox, then waits until the owner has drained the socket before waiting
again. The helper never touches the socket itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio
import zmq
from zmq.utils.monitor import parse_monitor_message

__all__ = ["MonitorEvent", "Readable", "TrioSocket", "run_owner", "watch"]


class TrioSocket:
    """A ``zmq.Socket`` owned by one Trio task.

    Args:
        socket: the socket to drive; this object owns it from now on (see :meth:`close`).
        name: for ``repr`` and tokens (``dealer``, ``monitor``...).
    """

    def __init__(self, socket: zmq.Socket[bytes], name: str) -> None:
        self.socket = socket
        self.name = name
        self.fd: int = int(socket.getsockopt(zmq.FD))
        self.closed = False

    def __repr__(self) -> str:
        return f"<TrioSocket {self.name} fd={self.fd}{' closed' if self.closed else ''}>"

    def ready(self, flag: int = zmq.POLLIN) -> bool:
        """Whether ``flag`` (POLLIN/POLLOUT) is ready now; processes pending socket commands."""
        return bool(int(self.socket.getsockopt(zmq.EVENTS)) & flag)

    async def wait(self, flag: int) -> None:
        """Sleep until ``flag`` is ready. Cancellable; only the owner may call it."""
        while not self.ready(flag):
            await trio.lowlevel.wait_readable(self.fd)

    async def recv_multipart(self) -> list[bytes]:
        """Receive one message. Blocks until one arrives; cancellable with nothing lost."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
                break
            except zmq.Again:
                await self.wait(zmq.POLLIN)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return frames

    async def send_multipart(self, frames: list[bytes]) -> None:
        """Send one message. Blocks while the socket cannot take it (high-water mark)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK)
                break
            except zmq.Again:
                await self.wait(zmq.POLLOUT)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self, linger: int = 0) -> None:
        """Close the socket (``linger`` milliseconds to flush what is queued). Idempotent.

        Wakes any task waiting on its descriptor with ``ClosedResourceError``; never blocks.
        """
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self.fd)
        self.socket.close(linger=linger)


@attrs.define(eq=False)
class Readable:
    """A watcher's token: ``socket`` may have something to do; set ``drained`` once handled."""

    socket: TrioSocket
    drained: trio.Event = attrs.field(factory=trio.Event)


async def watch(socket: TrioSocket, mailbox: trio.MemorySendChannel[Any]) -> None:
    """Post a :class:`Readable` to ``mailbox`` whenever ``socket``'s descriptor signals.

    Runs until cancelled or the socket is closed. Waits for the owner to set ``drained`` before
    watching again, so an unhandled signal never spins. Blocks on a full mailbox.
    """
    try:
        while True:
            await trio.lowlevel.wait_readable(socket.fd)
            token = Readable(socket)
            await mailbox.send(token)
            await token.drained.wait()
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        return  # the socket or the owner's mailbox closed: the owner is shutting down


OWNER_BATCH = 256
"""Mailbox items an owner handles before it drains its sockets again."""


async def run_owner(
    mailbox: trio.MemoryReceiveChannel[Any],
    handle: Callable[[object, list[Readable]], None],
    drain: Callable[[], bool],
) -> None:
    """The loop of a socket's owner task; runs until cancelled.

    Handles mailbox items in batches (``handle(item, tokens)`` collects watcher tokens), then
    ``drain()`` does what the sockets allow and returns True if more remains; only then are the
    watchers' tokens released, so a signal is never dropped. Blocks only on an empty mailbox.
    """
    more = False
    while True:
        tokens: list[Readable] = []
        if more:
            await trio.lowlevel.checkpoint()
        else:
            handle(await mailbox.receive(), tokens)
        for _ in range(OWNER_BATCH):
            try:
                item = mailbox.receive_nowait()
            except trio.WouldBlock:
                break
            handle(item, tokens)
        more = drain()
        for token in tokens:
            token.drained.set()


@attrs.frozen
class MonitorEvent:
    """One event from a socket monitor (``zmq.EVENT_*``); ``value`` depends on the event."""

    event: int
    value: int
    endpoint: str

    @classmethod
    def parse(cls, frames: list[bytes]) -> MonitorEvent:
        message = parse_monitor_message(frames)
        where: object = message["endpoint"]
        if isinstance(where, bytes):
            where = where.decode(errors="replace")
        return cls(int(message["event"]), int(message["value"]), str(where))

    @property
    def name(self) -> str:
        try:
            return zmq.Event(self.event).name or f"EVENT_{self.event}"
        except ValueError:
            return f"EVENT_{self.event}"
