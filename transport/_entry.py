"""``serve`` and ``open_client``: pick the carrier from the URL scheme."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trionsm.errors import InvalidArgument, Unimplemented

from ._dispatch import Dispatcher, Handlers
from ._inproc import InprocChannel, serve_inproc
from ._stubs import Client
from ._url import parse_url

__all__ = ["open_client", "serve"]


async def serve(
    url: str,
    handlers: Handlers,
    *,
    hop: str | None = None,
    roundtrip_bytes: bool = False,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handlers`` on ``url`` until cancelled; usable as a supervised child.

    ``task_status.started(server)`` reports the running server once it accepts calls; its ``url``
    is the bound address (a ``tcp://host:0`` URL reports the real port).

    Raises:
        InvalidArgument: a bad or non-dialable URL.
        AlreadyExists: the address is in use.
        ValueError: a handler lacks a method of a service it claims.
    """
    address = parse_url(url)
    dispatcher = Dispatcher(handlers, hop=hop or str(address))
    if address.carrier == "inproc":
        assert address.path is not None
        await serve_inproc(
            address.path, dispatcher, roundtrip_bytes=roundtrip_bytes, task_status=task_status
        )
        return
    if address.carrier is None:
        raise InvalidArgument(f"cannot serve on {url!r}: not a dialable URL")
    raise Unimplemented(f"the {address.carrier} carrier is not built yet", hop=str(address))


@asynccontextmanager
async def open_client(
    url: str,
    *,
    default_timeout: float | None = None,
    roundtrip_bytes: bool = False,
) -> AsyncIterator[Client]:
    """A :class:`Client` with typed stubs for every service at ``url``; closed on exit.

    Raises:
        InvalidArgument: a bad or non-dialable URL.
    """
    address = parse_url(url)
    if address.carrier == "inproc":
        assert address.path is not None
        channel = InprocChannel(address.path, roundtrip_bytes=roundtrip_bytes)
    elif address.carrier is None:
        raise InvalidArgument(f"cannot dial {url!r}: not a dialable URL")
    else:
        raise Unimplemented(f"the {address.carrier} carrier is not built yet", hop=str(address))
    try:
        yield Client(channel, default_timeout=default_timeout)
    finally:
        with trio.CancelScope(shield=True):
            await channel.aclose()
