"""The ``trionsm`` command line.

Each role runs as its own process: ``registry``, ``nsmgr``, ``forwarder``, ``nse`` serve until
SIGTERM/SIGINT (``serving URL`` on stdout once ready, exit 0 after a clean stop, 1 when they
cannot start); ``nsc`` connects to a network service and prints its events. ``node`` runs a
whole node (registry, nsmgr, forwarder, admin service) as one supervision tree from a TOML
config and flags; ``status`` prints a node's tree and connections. A bad flag exits 2 naming it.
``demo`` runs a two-node mesh in network namespaces with two faults (root). Still to come:
``scenario``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from types import ModuleType

from trionsm import __version__
from trionsm._cli import demo, forwarder, node, nsc, nse, nsmgr, registry, status

__all__ = ["build_parser", "main"]

_COMMANDS: dict[str, ModuleType] = {
    "registry": registry,
    "nsmgr": nsmgr,
    "forwarder": forwarder,
    "nse": nse,
    "nsc": nsc,
    "node": node,
    "status": status,
    "demo": demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trionsm",
        description="Network Service Mesh as a Trio actor system.",
    )
    parser.add_argument("--version", action="version", version=f"trionsm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trionsm`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = _COMMANDS.get(args.command)
    if command is not None:
        run: Callable[[argparse.Namespace], int] = command.run
        return run(args)
    parser.error(f"unknown command {args.command!r}")  # argparse exits (status 2)


if __name__ == "__main__":
    raise SystemExit(main())
