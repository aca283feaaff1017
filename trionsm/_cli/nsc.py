"""``trionsm nsc``: a client (NSC) that connects to a network service and reports every event.

One line per event on stdout (``--json``: one JSON object per line), flushed at once::

    connected nse-1 src=169.254.100.1/32 dst=169.254.100.0/32 id=nsc-1-1 path=nsc-1,nsmgr-0,...
    down nse-1 src=... reason="the monitor stream to the nsmgr broke: ..."
    healed nse-2 src=169.254.100.3/32 ... reason="reselected after: ..."
    closed nse-2 src=...

A ``kernel://`` connection puts its interface into ``--netns`` (default: this process's own
namespace, as NSM's cmd-nsc in a pod) and checks the wire by pinging through it from there every
``--liveness-interval`` (a check that takes longer than ``--liveness-timeout`` fails), so a
broken wire is seen and healed; its lines carry ``if=<interface>``.

Exit status: 0 after SIGTERM/SIGINT (the connection is closed through the whole path first) or,
with ``--once``, after the first successful connection (closed at once); 1 when the first
Request never succeeded within ``--request-timeout`` (``trionsm nsc: <Error>: <why>`` on stderr);
2 for a bad flag (a missing namespace, ``--netns`` for another mechanism than kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import trio

from trionsm.actors._mechanisms import KERNEL, Param
from trionsm.actors._nsurl import parse_nsurl
from trionsm.actors.client import (
    DEFAULT_LIVENESS_INTERVAL,
    DEFAULT_LIVENESS_TIMEOUT,
    DEFAULT_NSMGR_URL,
    DEFAULT_REQUEST_TIMEOUT,
    ClientConnection,
    ConnectionEvent,
    open_connection,
)
from trionsm.api.connection import Connection
from trionsm.errors import TrionsmError

from .options import dial_url, duration, labels, mtu, name, netns, nsurl, usage_error

__all__ = ["add_parser", "describe", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "nsc",
        help="connect to a network service and print its events until SIGTERM",
        description="Request a network service through the node's nsmgr, keep the connection "
        "alive (refresh, monitor, heal) and print one line per event: connected, refreshed, "
        "down, healed, closed, with the endpoint and the addresses. A kernel:// connection gets "
        "an interface in --netns and pings through it to check the wire (a dead wire heals). "
        "SIGTERM or SIGINT closes the connection through the whole path (removing the "
        "interface) and exits 0.",
    )
    parser.add_argument(
        "url",
        type=nsurl,
        metavar="URL",
        help="<mechanism>://<service>[/<interface>][?label=value&...], e.g. "
        "kernel://icmp-responder/nsm-1 (an interface nsm-1 in --netns) or noop://icmp-responder",
    )
    parser.add_argument(
        "--nsmgr",
        type=dial_url,
        metavar="URL",
        help=f"the node's nsmgr (default: $NSM_NSMGR_URL, else {DEFAULT_NSMGR_URL})",
    )
    parser.add_argument("--name", type=name, help="this client's name (default nsc-<pid>)")
    parser.add_argument(
        "--labels",
        type=labels,
        metavar="K=V[,K=V...]",
        help="request labels (over the URL's), matched by the service's selectors",
    )
    parser.add_argument(
        "--request-timeout",
        type=duration,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="DURATION",
        help=f"how long the first Request is retried, and each Request's bound (default "
        f"{DEFAULT_REQUEST_TIMEOUT:g}s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="exit 0 after the first successful connection (closing it)",
    )
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    kernel = parser.add_argument_group("kernel:// connections")
    kernel.add_argument(
        "--netns",
        type=netns,
        metavar="NAME|URL",
        help="the network namespace the interface goes into: a NAME made by 'ip netns add "
        "NAME' (/run/netns/NAME) or a URL (file:///run/netns/NAME, file:///proc/PID/ns/net, "
        "inode://DEV/INO); it must exist (default: this process's own namespace)",
    )
    kernel.add_argument("--mtu", type=mtu, help="the interface's MTU (68..65535)")
    kernel.add_argument(
        "--liveness-interval",
        type=duration,
        metavar="DURATION",
        help=f"how often the wire is checked by pinging the endpoint through it (default "
        f"{DEFAULT_LIVENESS_INTERVAL * 1000:g}ms)",
    )
    kernel.add_argument(
        "--liveness-timeout",
        type=duration,
        metavar="DURATION",
        help=f"how long one check may take before the wire counts as dead and the connection "
        f"heals (default {DEFAULT_LIVENESS_TIMEOUT:g}s)",
    )


def _summary(connection: Connection | None) -> dict[str, Any]:
    if connection is None:
        return {"endpoint": "", "src": [], "dst": [], "id": "", "path": [], "interface": ""}
    ip = connection.context.ip_context if connection.context is not None else None
    segments = connection.path.path_segments if connection.path is not None else []
    mechanism = connection.mechanism
    kernel = mechanism is not None and mechanism.type == KERNEL
    return {
        "endpoint": connection.network_service_endpoint_name,
        "src": list(ip.src_ip_addrs) if ip is not None else [],
        "dst": list(ip.dst_ip_addrs) if ip is not None else [],
        "id": connection.id,
        "path": [segment.name for segment in segments],
        "interface": mechanism.parameters.get(Param.NAME, "") if kernel and mechanism else "",
    }


def describe(event: ConnectionEvent, last: Connection | None, *, as_json: bool) -> str:
    """One output line for ``event`` (``last``: the connection before it, for ``closed``)."""
    summary = _summary(event.connection or last)
    if as_json:
        return json.dumps({"event": event.kind.value, **summary, "reason": event.reason})
    words = [event.kind.value, summary["endpoint"] or "-"]
    words.append(f"src={','.join(summary['src'])}")
    words.append(f"dst={','.join(summary['dst'])}")
    words.append(f"id={summary['id']}")
    words.append(f"path={','.join(summary['path'])}")
    if summary["interface"]:
        words.append(f"if={summary['interface']}")
    if event.reason:
        words.append(f"reason={json.dumps(event.reason)}")
    return " ".join(words)


class _Printer:
    """Prints each event of a connection once, in order."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.printed = 0
        self.last: Connection | None = None

    def flush(self, conn: ClientConnection) -> None:
        for event in conn.history[self.printed :]:
            print(describe(event, self.last, as_json=self.as_json), flush=True)
            self.printed += 1
            self.last = event.connection or self.last


def _kernel_options(args: argparse.Namespace) -> dict[str, Any]:
    """``open_connection``'s netns/mtu/liveness options from the flags (kernel:// only)."""
    if parse_nsurl(args.url).mechanism != KERNEL:
        return {}
    options: dict[str, Any] = {"netns": args.netns or f"file:///proc/{os.getpid()}/ns/net"}
    if args.mtu is not None:
        options["mtu"] = args.mtu
    if args.liveness_interval is not None:
        options["liveness_interval"] = args.liveness_interval
    if args.liveness_timeout is not None:
        options["liveness_timeout"] = args.liveness_timeout
    return options


async def _hold(args: argparse.Namespace, printer: _Printer) -> None:
    held: list[ClientConnection] = []
    try:
        async with open_connection(
            args.url,
            nsmgr=args.nsmgr,
            labels=args.labels,
            name=args.name,
            request_timeout=args.request_timeout,
            **_kernel_options(args),
        ) as conn:
            held.append(conn)
            if args.once:
                printer.flush(conn)  # connected: leaving the block closes it
                return
            async for _ in conn.events():  # never ends: a signal cancels it
                printer.flush(conn)
    finally:
        if held:
            printer.flush(held[0])  # up to the closing event


async def _main(args: argparse.Namespace) -> int:
    printer = _Printer(args.json)
    status = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    print(f"stopping on {signal.Signals(signum).name}", file=sys.stderr, flush=True)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                await _hold(args, printer)
            except TrionsmError as exc:
                cause = exc.__cause__
                also = f" (last error: {type(cause).__name__})" if cause is not None else ""
                print(f"trionsm nsc: {type(exc).__name__}: {exc}{also}", file=sys.stderr)
                status = 1
            nursery.cancel_scope.cancel()
    return status


_KERNEL_FLAGS = ("netns", "mtu", "liveness_interval", "liveness_timeout")


def run(args: argparse.Namespace) -> int:
    """Connect and report until a signal (or the first connection, ``--once``); 2 when a
    kernel:// flag is given for another mechanism."""
    mechanism = parse_nsurl(args.url).mechanism
    if mechanism != KERNEL:
        for flag in _KERNEL_FLAGS:
            if getattr(args, flag) is not None:
                option = "--" + flag.replace("_", "-")
                return usage_error("nsc", option, f"is for kernel:// URLs, not {args.url!r}")
    return trio.run(_main, args)
