"""``trionsm nsmgr``: a node's nsmgr as its own process, serving until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from functools import partial

from trionsm.actors.nsmgr import serve_nsmgr
from trionsm.actors.registry import DEFAULT_EXPIRY

from .options import dial_url, duration, listen_url, name
from .serving import run_serving

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "nsmgr",
        help="run a node's nsmgr (NetworkService, MonitorConnection, the node's registry front)",
        description="Serve an nsmgr until SIGTERM or SIGINT: workloads Request network services "
        "from it, the node's forwarders and endpoints register through it. Prints 'serving URL' "
        "on stdout for each listener once it accepts calls.",
    )
    parser.add_argument("--name", required=True, type=name, help="its name (path segment)")
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        type=listen_url,
        metavar="URL",
        help="a URL to serve on (repeatable): unix:///path for the node's workloads, "
        "tcp://HOST:PORT for other nodes (tcp://HOST:0 picks a free port)",
    )
    parser.add_argument(
        "--registry",
        type=dial_url,
        metavar="URL",
        help="the registry (e.g. tcp://127.0.0.1:5002); without it an in-memory registry for "
        "this node alone runs inside the nsmgr",
    )
    parser.add_argument(
        "--public-url",
        type=dial_url,
        metavar="URL",
        help="the URL other nodes dial, registered for this node's endpoints (default: the "
        "first --listen URL that is not a unix socket, else the first)",
    )
    parser.add_argument(
        "--registry-expiry",
        type=duration,
        default=DEFAULT_EXPIRY,
        metavar="DURATION",
        help=f"the embedded registry's longest registration lifetime without a refresh "
        f"(default {DEFAULT_EXPIRY:g}s; ignored with --registry)",
    )


def run(args: argparse.Namespace) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the nsmgr could not start."""
    start = partial(
        serve_nsmgr,
        args.name,
        args.listen,
        registry=args.registry,
        public_url=args.public_url,
        registry_options=None if args.registry else {"expiry": args.registry_expiry},
    )
    return run_serving("nsmgr", start, lambda handle: handle.urls)
