"""``trionsm registry``: a standalone registry serving NSM's registry API until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from functools import partial

from trionsm.actors.registry import DEFAULT_EXPIRY, serve_registry

from .options import duration, listen_url, store_url
from .serving import run_serving

__all__ = ["DEFAULT_LISTEN", "add_parser", "run"]

DEFAULT_LISTEN = "tcp://127.0.0.1:5002"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "registry",
        help="run a registry (NetworkServiceRegistry + NetworkServiceEndpointRegistry)",
        description="Serve NSM's registry API until SIGTERM or SIGINT. Prints 'serving URL' "
        "on stdout for each listener once it accepts calls.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        type=listen_url,
        metavar="URL",
        help=f"a URL to serve on (repeatable; tcp://, unix://, zmq+tcp://...; default "
        f"{DEFAULT_LISTEN}; tcp://HOST:0 picks a free port)",
    )
    parser.add_argument(
        "--store",
        type=store_url,
        default="memory",
        help="where registrations live: memory (default) or etcd://HOST:PORT[/PREFIX]",
    )
    parser.add_argument(
        "--expiry",
        type=duration,
        default=DEFAULT_EXPIRY,
        metavar="DURATION",
        help=f"longest endpoint registration lifetime without a refresh (default "
        f"{DEFAULT_EXPIRY:g}s)",
    )
    parser.add_argument("--name", default="registry", help="this registry's name in errors")


def run(args: argparse.Namespace) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the registry could not start."""
    start = partial(
        serve_registry,
        args.listen or [DEFAULT_LISTEN],
        store=args.store,
        expiry=args.expiry,
        hop=args.name,
    )
    return run_serving("registry", start, lambda handle: handle.urls)
