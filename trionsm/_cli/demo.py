"""``trionsm demo``: the two-node mesh in network namespaces, two faults, each heal timed.

Progress lines on stdout as it goes (see :mod:`trionsm._demo`); with ``--json`` the last line is
one JSON object: ``connected``, ``ping_ok``, ``healed`` (bools), ``heal_ms`` (NSE death to the
connection UP on the other NSE), ``gap_ms`` (the longest ping gap over the whole run),
``leaked`` (what the leak check found left), then ``forwarder_gap_ms``, ``wire_kept`` and
``problems``.

Exit status: 0 when it connected, the ping went through, the connection healed onto the other
NSE and nothing was left; 1 otherwise (also when not root: it needs network namespaces).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import trio
from rich.console import Console
from rich.text import Text

from trionsm._demo import DemoReport, Progress, print_json, run_demo, summary_table

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the two-node demo mesh in network namespaces, with two faults (root)",
        description="Build a two-node mesh in network namespaces on this machine (a registry, "
        "node-1 and node-2 with an nsmgr and a forwarder process each, two ICMP-responder NSEs "
        "on node-2, an NSC on node-1 pinging through a VXLAN wire), SIGKILL node-1's forwarder "
        "(restarted, it reconciles), kill the NSE in use (the NSC reselects the other), time "
        "each heal, tear everything down and check that nothing is left. Needs root.",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object on the last line",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when everything worked and nothing was left, else 1."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        problem = "needs root and iproute2's 'ip' (it makes network namespaces)"
        print(f"trionsm demo: {problem}", file=sys.stderr)
        if args.json:
            print_json(DemoReport(problems=[problem]))
        return 1
    console = Console(highlight=False, soft_wrap=True)
    report = trio.run(_main, console)
    console.print()
    console.print(summary_table(report))
    if report.ok:
        console.print("[bold green]demo OK[/]")
    else:
        problems = "; ".join(report.problems or ["see above"])
        console.print(Text(f"demo FAILED: {problems}", style="bold red"))
    if args.json:
        print_json(report)  # the last line, plain (never wrapped or styled)
    return 0 if report.ok else 1


async def _main(console: Console) -> DemoReport:
    return await run_demo(Progress(console))
