"""The ``trionsm`` command line.

Sub-commands arrive with the features they run (``node``, ``registry``, ``nsmgr``, ``forwarder``,
``nse``, ``nsc``, ``status``, ``scenario``). ``demo`` is listed now and says what it still needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trionsm import __version__
from trionsm._cli import registry

__all__ = ["build_parser", "main"]

_DEMO_MISSING = """\
trionsm demo: not built yet.
The demo runs a two-node mesh in network namespaces (registry, two `trionsm node` processes, an
external forwarder, two ICMP-responder NSEs, a pinging NSC) and injects a forwarder SIGKILL and an
NSE death. It needs pieces that do not exist yet:
  - the nsmgr/forwarder/NSE/NSC actors and the connection path
  - the kernel data plane (veth and VXLAN wires)
  - `trionsm node` and the process-level mesh builder
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trionsm",
        description="Network Service Mesh as a Trio actor system.",
    )
    parser.add_argument("--version", action="version", version=f"trionsm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="run the two-node demo mesh (not built yet)")
    registry.add_parser(commands)
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
    if args.command == "registry":
        return registry.run(args)
    parser.error(f"unknown command {args.command!r}")  # argparse exits (status 2)


if __name__ == "__main__":
    raise SystemExit(main())
