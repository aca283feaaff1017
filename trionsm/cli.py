"""The ``trionsm`` command line.

Each role runs as its own process: ``registry``, ``nsmgr``, ``forwarder``, ``nse`` serve until
SIGTERM/SIGINT (``serving URL`` on stdout once ready, exit 0 after a clean stop, 1 when they
cannot start); ``nsc`` connects to a network service and prints its events. ``node`` runs a
whole node (registry, nsmgr, forwarder, admin service) as one supervision tree from a TOML
config and flags; ``status`` prints a node's tree and connections. A bad flag exits 2 naming it.
Still to come: ``scenario``; ``demo`` says what it still needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from trionsm import __version__
from trionsm._cli import forwarder, node, nsc, nse, nsmgr, registry, status

__all__ = ["build_parser", "main"]

_DEMO_MISSING = """\
trionsm demo: not built yet.
The demo runs a two-node mesh in network namespaces (registry, two `trionsm node` processes, an
external forwarder, two ICMP-responder NSEs, a pinging NSC) and injects a forwarder SIGKILL and an
NSE death. It needs pieces that do not exist yet:
  - the kernel data plane (veth and VXLAN wires) in the forwarder, and the ICMP responder
  - `trionsm node` and the mesh in network namespaces
"""

_COMMANDS: dict[str, ModuleType] = {
    "registry": registry,
    "nsmgr": nsmgr,
    "forwarder": forwarder,
    "nse": nse,
    "nsc": nsc,
    "node": node,
    "status": status,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trionsm",
        description="Network Service Mesh as a Trio actor system.",
    )
    parser.add_argument("--version", action="version", version=f"trionsm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="run the two-node demo mesh (not built yet)")
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
    if args.command == "demo":
        sys.stderr.write(_DEMO_MISSING)
        return 3
    command = _COMMANDS.get(args.command)
    if command is not None:
        run: Callable[[argparse.Namespace], int] = command.run
        return run(args)
    parser.error(f"unknown command {args.command!r}")  # argparse exits (status 2)


if __name__ == "__main__":
    raise SystemExit(main())
