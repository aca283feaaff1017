"""``serve`` and ``open_client``: pick the carrier from the URL scheme.

The gRPC and ZeroMQ carriers are imported only when a URL needs them, so an inproc-only program
never loads trio-asyncio or pyzmq.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trionsm.errors import InvalidArgument

from ._channel import Channel
from ._dispatch import Dispatcher, Handlers
from ._inproc import InprocChannel, serve_inproc
from ._limits import MAX_MESSAGE_BYTES, check_message_limit
from ._stubs import Client
from ._url import Address, parse_url

__all__ = ["open_client", "serve"]


def _dialable(url: str, verb: str) -> Address:
    address = parse_url(url)
    if not address.dialable:
        raise InvalidArgument(f"cannot {verb} {url!r}: an inode:// URL is never dialed")
    return address


async def serve(
    url: str,
    handlers: Handlers,
    *,
    hop: str | None = None,
    roundtrip_bytes: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    curve: Any = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handlers`` on ``url`` until cancelled; usable as a supervised child.

    ``task_status.started(server)`` reports the running server once it accepts calls; its ``url``
    is the bound address (a ``tcp://host:0`` URL reports the real port).

    Args:
        url: ``inproc://``, ``unix://``/``tcp://`` (gRPC) or ``zmq+tcp://``/``zmq+ipc://``.
        handlers: ``{SERVICE_SPEC: handler_object}``.
        hop: this server's name in the errors it returns (default: the URL).
        roundtrip_bytes: inproc only: encode every message as on the wire.
        ssl_context: gRPC only: TLS (mTLS when it requires client certificates).
        curve: ZeroMQ only: the server's CurveZMQ keys.
        max_message_bytes: the largest request the server takes and reply it sends, on every
            carrier (``ResourceExhausted`` above it); 4 MiB by default, as gRPC's.

    Raises:
        InvalidArgument: a bad or non-dialable URL.
        AlreadyExists: the address is in use.
        ValueError: a handler lacks a method of a service it claims, or a bad
            ``max_message_bytes``.
    """
    address = _dialable(url, "serve on")
    limit = check_message_limit(max_message_bytes)
    dispatcher = Dispatcher(handlers, hop=hop or str(address))
    if address.carrier == "inproc":
        assert address.path is not None
        await serve_inproc(
            address.path,
            dispatcher,
            roundtrip_bytes=roundtrip_bytes,
            max_message_bytes=limit,
            task_status=task_status,
        )
    elif address.carrier == "grpc":
        from ._grpc import serve_grpc

        await serve_grpc(
            address,
            dispatcher,
            ssl_context=ssl_context,
            max_message_bytes=limit,
            task_status=task_status,
        )
    else:
        from ._zmq import serve_zmq

        await serve_zmq(
            address, dispatcher, curve=curve, max_message_bytes=limit, task_status=task_status
        )


@asynccontextmanager
async def open_client(
    url: str,
    *,
    default_timeout: float | None = None,
    roundtrip_bytes: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    curve: Any = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> AsyncIterator[Client]:
    """A :class:`Client` with typed stubs for every service at ``url``; closed on exit.

    Connecting is lazy where the carrier allows it: an unreachable server shows up as
    :class:`Unavailable` on the first call, not here. ``max_message_bytes`` bounds every request
    the client sends and reply it takes (``ResourceExhausted`` above it; 4 MiB by default).

    Raises:
        InvalidArgument: a bad or non-dialable URL.
        ValueError: a bad ``max_message_bytes``.
    """
    address = _dialable(url, "dial")
    limit = check_message_limit(max_message_bytes)
    channel: Channel
    if address.carrier == "inproc":
        assert address.path is not None
        channel = InprocChannel(
            address.path, roundtrip_bytes=roundtrip_bytes, max_message_bytes=limit
        )
        try:
            yield Client(channel, default_timeout=default_timeout)
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()
    elif address.carrier == "grpc":
        from ._grpc import open_grpc_channel

        async with open_grpc_channel(
            address, ssl_context=ssl_context, max_message_bytes=limit
        ) as channel:
            yield Client(channel, default_timeout=default_timeout)
    else:
        from ._zmq import open_zmq_channel

        async with open_zmq_channel(address, curve=curve, max_message_bytes=limit) as channel:
            yield Client(channel, default_timeout=default_timeout)
