"""``trionsm node``: a whole node (registry, nsmgr, forwarder, admin) as one supervision tree.

The configuration comes from ``--config node.toml`` (see :mod:`trionsm._cli.config` for every
key and its default) with the flags over it; everything is checked before anything starts: a
bad flag or config value exits 2 naming it, its value and what is allowed. Then the contract of
every serving command: ``serving URL`` on stdout per listener once the node serves (the nsmgr's
URLs in ``--listen`` order, then the admin service's), exit 0 after SIGTERM/SIGINT (an ordered,
bounded stop), 1 when it cannot start. A stop that takes longer than ``shutdown_timeout`` ends
the process at once with exit status 1, after one line on stderr naming the step it was in and
the actors still running (its unix sockets are removed first).
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

from trionsm.actors.node import FORWARDER_MODES, NodeConfig, NodeHandle, serve_node

from . import options
from .config import ConfigError, load_config
from .serving import kernel_access, run_serving

__all__ = ["add_parser", "registry_flag", "run"]


def registry_flag(text: str) -> str:
    """argparse type for ``--registry``: ``memory``, ``etcd://HOST:PORT[/PREFIX]`` or a URL."""
    if text == "memory" or text.startswith("etcd:"):
        return options.store_url(text)
    try:
        return options.dial_url(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}; expected 'memory', 'etcd://HOST:PORT[/PREFIX]' or the URL of a remote "
            "registry (tcp://HOST:PORT, unix:///path)"
        ) from None


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "node",
        help="run a node: registry, nsmgr, forwarder and admin service as one supervision tree",
        description="Run a node's roles as one supervision tree until SIGTERM or SIGINT: the "
        "node's registry (unless --registry names a remote one), its nsmgr (NSM's socket "
        "<dir>/nsm.io.sock and TCP), its forwarder (unless --forwarder external) and the admin "
        "service that 'trionsm status' reads. Flags override --config. Prints 'serving URL' "
        "per listener once it serves. SIGTERM closes every connection (the endpoints see the "
        "Close, wires are removed), unregisters and exits 0, all within --shutdown-timeout "
        "(else exit 1 naming what still ran).",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML file (every key optional)"
    )
    parser.add_argument("--name", type=options.name, help="the node's name (default: host name)")
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="the node's directory for its sockets (default /var/lib/networkservicemesh; one "
        "per node when several share a host)",
    )
    parser.add_argument(
        "--listen",
        action="append",
        type=options.listen_url,
        metavar="URL",
        help="a URL for the nsmgr (repeatable; replaces [nsmgr] listen; default "
        "unix://<dir>/nsm.io.sock and tcp://127.0.0.1:5001; tcp://HOST:0 picks a free port)",
    )
    parser.add_argument(
        "--public-url",
        type=options.dial_url,
        metavar="URL",
        help="the URL other nodes dial (default: the first --listen URL that is not unix://)",
    )
    parser.add_argument(
        "--registry",
        type=registry_flag,
        metavar="STORE|URL",
        help="memory (default) or etcd://HOST:PORT[/PREFIX]: the node runs the registry; a URL "
        "(tcp://HOST:5002): a remote registry",
    )
    parser.add_argument(
        "--registry-listen",
        action="append",
        type=options.listen_url,
        metavar="URL",
        help="also serve the node's registry here (repeatable), e.g. tcp://0.0.0.0:5002",
    )
    parser.add_argument(
        "--forwarder",
        choices=FORWARDER_MODES,
        help="internal (default): the forwarder runs in this node's tree; external: a separate "
        "'trionsm forwarder' registers at the nsmgr",
    )
    parser.add_argument(
        "--mechanism",
        action="append",
        type=options.mechanism,
        help=f"a mechanism the forwarder programs (repeatable; {', '.join(options.MECHANISMS)}; "
        "default both)",
    )
    parser.add_argument(
        "--admin-listen",
        action="append",
        type=options.listen_url,
        metavar="URL",
        help="a URL for the admin service (repeatable; default unix://<dir>/admin.sock)",
    )
    parser.add_argument(
        "--restart-keep-dataplane",
        action="store_true",
        default=None,
        help="on SIGTERM, stop without closing connections or removing wires (for a restart: "
        "the next run adopts them as the clients re-request)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=options.duration,
        metavar="DURATION",
        help="how long the whole stop after SIGTERM may take (default 30s); past it the node "
        "exits 1 naming what was still running",
    )


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The flags given, by config section (absent flags override nothing)."""
    flags: dict[str, dict[str, Any]] = {"": {}, "nsmgr": {}, "registry": {}, "forwarder": {}}
    flags["admin"] = {}
    pairs = [
        ("", "name", args.name),
        ("", "dir", args.dir),
        ("", "restart_keep_dataplane", args.restart_keep_dataplane),
        ("", "shutdown_timeout", args.shutdown_timeout),
        ("nsmgr", "listen", tuple(args.listen) if args.listen else None),
        ("nsmgr", "public_url", args.public_url),
        ("registry", "store", args.registry),
        ("registry", "listen", tuple(args.registry_listen) if args.registry_listen else None),
        ("forwarder", "mode", args.forwarder),
        ("forwarder", "mechanisms", tuple(dict.fromkeys(args.mechanism or ())) or None),
        ("admin", "listen", tuple(args.admin_listen) if args.admin_listen else None),
    ]
    for section, key, value in pairs:
        if value is not None:
            flags[section][key] = value
    return flags


def _urls(handle: NodeHandle) -> list[str]:
    return [*handle.urls, *handle.admin_urls]


def run(args: argparse.Namespace) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the node could not start, 2 for a bad
    flag or config value."""
    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"trionsm node: error: {exc.reason}", file=sys.stderr)
        return 2
    missing = None
    if config.forwarder.kernel:
        missing = kernel_access(config.forwarder.name, "a forwarder with kernel mechanisms")
    start = partial(serve_node, config, on_overrun=partial(_overrun, config))
    return run_serving("node", start, _urls, precondition=missing)


def _overrun(config: NodeConfig, message: str) -> None:
    """The stop took longer than ``shutdown_timeout``: say so, remove the node's unix sockets
    (nothing will serve on them), exit 1 at once (what still runs cannot be waited for)."""
    print(f"trionsm node: {message}", file=sys.stderr, flush=True)
    urls = [*config.nsmgr.listen, *config.admin_listen, *config.registry.listen]
    if config.forwarder.internal:
        urls.append(config.forwarder.listen)
    for url in urls:
        if url.startswith("unix://"):
            Path(url.removeprefix("unix://")).unlink(missing_ok=True)
    sys.stdout.flush()
    os._exit(1)
