"""``trionsm status``: a node's supervision tree and connections, read from its admin service.

Two tables (``rich``): every actor by path with its kind, state and restarts, then every
connection each hop holds (service, path, state, expiry, mechanism, interface). ``--json``
prints one JSON object instead: ``{"node": ..., "actors": [...], "connections": [...]}``. Exit
status 0, or 1 when the node cannot be reached (``trionsm status: <Error>: <why>`` on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

from trionsm.actors.node import ADMIN_SOCKET, DEFAULT_DIR
from trionsm.api.trionsm.admin.v1 import (
    Actor,
    ConnectionsRequest,
    HopConnection,
    TreeRequest,
    TreeResponse,
)
from trionsm.errors import TrionsmError
from trionsm.transport import open_client

from . import options

__all__ = ["add_parser", "fetch", "run", "to_json"]

DEFAULT_TIMEOUT = 5.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "status",
        help="show a node's supervision tree and connections",
        description="Ask a running 'trionsm node' (its admin service) for its supervision tree "
        "and the connections its nsmgr and forwarder hold, and print them as tables (or JSON).",
    )
    parser.add_argument(
        "--node",
        type=options.dial_url,
        metavar="URL",
        help=f"the node's admin service (default unix://<dir>/{ADMIN_SOCKET})",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(DEFAULT_DIR),
        metavar="DIR",
        help=f"the node's directory, when --node is not given (default {DEFAULT_DIR})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout",
        type=options.duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"how long each call may take (default {DEFAULT_TIMEOUT:g}s)",
    )


async def fetch(url: str, bound: float) -> tuple[TreeResponse, list[HopConnection]]:
    """The node's tree and connections from its admin service at ``url`` (each call within
    ``bound`` seconds)."""
    async with open_client(url, default_timeout=bound) as client:
        tree = await client.admin.tree(TreeRequest())
        found = await client.admin.connections(ConnectionsRequest())
    return tree, list(found.connections)


def _actor(row: Actor) -> dict[str, Any]:
    return {
        "path": row.path,
        "id": row.id,
        "depth": row.depth,
        "kind": row.kind,
        "status": row.status,
        "restarts": row.restarts,
        "restart": row.restart,
        "strategy": row.strategy or None,
        "last_exit": row.last_exit or None,
    }


def _connection(row: HopConnection) -> dict[str, Any]:
    return {
        "role": row.role,
        "hop": row.hop,
        "id": row.id,
        "network_service": row.network_service,
        "endpoint": row.endpoint or None,
        "path": list(row.path),
        "state": row.state,
        "expires": row.expires.isoformat() if row.expires is not None else None,
        "mechanism": row.mechanism or None,
        "interface": row.interface or None,
    }


def to_json(tree: TreeResponse, connections: list[HopConnection]) -> dict[str, Any]:
    """The one JSON object ``--json`` prints."""
    return {
        "node": tree.node,
        "actors": [_actor(row) for row in tree.actors],
        "connections": [_connection(row) for row in connections],
    }


def _print_tables(tree: TreeResponse, connections: list[HopConnection]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a pipe or a file: no width to fit, keep every value whole
        console = Console(width=240)
    actors = Table(title=f"node {tree.node}: supervision tree", title_justify="left")
    for column in ("path", "kind", "status", "restarts", "last exit"):
        right = column == "restarts"
        actors.add_column(column, justify="right" if right else "left", overflow="fold")
    for row in tree.actors:
        name = "  " * row.depth + row.id
        kind = f"{row.kind} ({row.strategy})" if row.strategy else row.kind
        status = row.status if row.status == "running" else f"[bold red]{row.status}[/]"
        actors.add_row(name, kind, status, str(row.restarts), row.last_exit)
    console.print(actors)
    table = Table(title=f"node {tree.node}: connections", title_justify="left")
    columns = ("hop", "id", "service", "path", "state", "expires", "mechanism", "interface")
    for column in columns:
        table.add_column(column, overflow="fold")
    for c in connections:
        expires = c.expires.strftime("%H:%M:%S") if c.expires is not None else ""
        state = c.state if c.state == "UP" else f"[bold red]{c.state}[/]"
        path = " > ".join(c.path)
        table.add_row(
            c.hop, c.id, c.network_service, path, state, expires, c.mechanism, c.interface
        )
    if not connections:
        table.add_row("(none)", *[""] * (len(columns) - 1))
    console.print(table)


def run(args: argparse.Namespace) -> int:
    """Print the node's status; 0, or 1 when it cannot be reached."""
    url = args.node or f"unix://{args.dir / ADMIN_SOCKET}"
    try:
        tree, connections = trio.run(fetch, url, args.timeout)
    except TrionsmError as exc:
        print(f"trionsm status: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(to_json(tree, connections)), flush=True)
    else:
        _print_tables(tree, connections)
    return 0
