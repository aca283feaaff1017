"""What the serving sub-commands share: run until SIGTERM/SIGINT, report a failed start.

Each serving command (``registry``, ``nsmgr``, ``forwarder``, ``nse``) hands :func:`run_serving`
a start function (a ``serve_*`` with its arguments bound, taking ``task_status``) and a way to
list the URLs it serves. The contract:

* ``serving URL`` on stdout, one line per listener, once the role accepts calls;
* SIGTERM or SIGINT: ``stopping on SIGTERM`` on stderr, the role stops (leases unregister,
  sockets are removed) and the process exits 0;
* the role cannot start (an address in use, a registry that never answered, no
  ``CAP_NET_ADMIN`` for a role that programs kernel interfaces): one line
  ``trionsm <command>: cannot start: <why>`` on stderr and exit status 1 (``failed: <why>``
  when its supervisor gives up later).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from trionsm.errors import PermissionDenied, TrionsmError
from trionsm.supervision import StartError

__all__ = ["kernel_access", "run_serving", "start_failure"]

_CAP_NET_ADMIN = 12  # capability(7) number

Start = Callable[..., Any]
"""``async start(*, task_status)``: runs the role until cancelled, reports its handle."""


async def _serve(start: Start, urls: Callable[[Any], Iterable[str]], started: list[bool]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(start)
            started.append(True)
            for url in urls(handle):
                print(f"serving {url}", flush=True)
            async for signum in signals:
                print(f"stopping on {signal.Signals(signum).name}", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()
                break


def start_failure(exc: BaseException) -> BaseException | None:
    """The first StartError/TrionsmError/OSError in ``exc`` (through groups), by root cause."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = start_failure(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, StartError):
        return start_failure(exc.__cause__) if exc.__cause__ is not None else exc
    return exc if isinstance(exc, TrionsmError | OSError) else None


def kernel_access(hop: str, what: str) -> PermissionDenied | None:
    """Why this process cannot program kernel interfaces (``what`` needs them), else None.

    Creating veth pairs and moving them between namespaces needs ``CAP_NET_ADMIN`` (root has
    it unless it was dropped, e.g. by ``setpriv`` or a container's capability set).
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError as exc:
        return PermissionDenied(f"{what}: cannot read this process's capabilities: {exc}", hop=hop)
    effective = next(
        (int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:")),
        0,
    )
    if effective >> _CAP_NET_ADMIN & 1:
        return None
    return PermissionDenied(
        f"{what} needs CAP_NET_ADMIN (run it as root), which this process does not have",
        hop=hop,
    )


def run_serving(
    command: str,
    start: Start,
    urls: Callable[[Any], Iterable[str]],
    *,
    precondition: BaseException | None = None,
) -> int:
    """Run ``start`` until a signal; 0 after a clean stop, 1 when it could not start (or
    failed for good after it started: its supervisor gave up).

    Args:
        command: the sub-command's name, for the error line.
        start: ``async start(*, task_status)``; its handle goes to ``urls``.
        urls: the URLs the started role serves, in the order of its listeners.
        precondition: why the role cannot start, found before it is run (e.g.
            :func:`kernel_access`): reported as a failed start, and nothing is started.
    """
    if precondition is not None:
        print(f"trionsm {command}: cannot start: {precondition}", file=sys.stderr)
        return 1
    started: list[bool] = []
    try:
        trio.run(_serve, start, urls, started)
    except (Exception, BaseExceptionGroup) as exc:
        failure = start_failure(exc)
        if failure is None:
            raise
        what = "failed" if started else "cannot start"
        print(f"trionsm {command}: {what}: {failure}", file=sys.stderr)
        return 1
    return 0
