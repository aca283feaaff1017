"""The demo: a two-node mesh in network namespaces, two faults, each heal timed, nothing left.

Flow (:func:`run_demo`): a bridge and a registry; node-1 and node-2 (``trionsm node`` processes
in their namespaces, node-1's forwarder a process of its own, see :mod:`trionsm._netmesh`); two
ICMP-responder NSEs on
node-2 (pools ``169.254.101.0/24`` and ``169.254.102.0/24``); an NSC on node-1 asking for
``kernel://icmp-responder/nsm-1``, which gets a VXLAN wire across the nodes. The demo pings
through the wire from the NSC's namespace every 50 ms for the whole run, then:

1. SIGKILLs node-1's forwarder process and starts it again on the same socket: it reconciles
   (adopts the NSC's wire as it is, when the NSC's heal re-requests it); the demo reports the
   longest ping gap around it and whether the NSC's interface is still the same one;
2. kills the NSE in use (SIGKILL; its pod's interfaces and namespace go): the NSC reselects the
   other NSE, a new wire with new addresses; ``heal_ms`` runs from the kill to the NSC's
   ``healed`` event on the other NSE, and the ping must then be answered at the new address.

Then everything is torn down and :func:`~trionsm._netmesh.find_leaks` counts what is left. Every
wait is bounded; a phase that fails is reported, and the rest is skipped but the teardown and the
leak check always run.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import trio
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trionsm._netmesh import Inventory, NetMesh, Pod, find_leaks, link_index, open_netmesh
from trionsm._probes import Event, EventLog, Pinger
from trionsm.errors import TrionsmError

__all__ = ["DemoReport", "Progress", "print_json", "run_demo", "summary_table"]

SERVICE = "icmp-responder"
STEP_TIMEOUT = 15.0
"""Seconds any one wait of the demo may take (each normally takes well under two)."""
QUIET_HEAL = 5.0
"""Seconds after the forwarder's restart within which the NSC's heal is expected (about one
here); a path that heals without the NSC seeing it is judged by the pings alone."""


@attrs.define
class DemoReport:
    """What the demo found; :meth:`summary` is the JSON object ``--json`` prints last.

    Times are in seconds here (milliseconds in the summary); None when the run did not get that
    far.
    """

    connected: bool = False
    ping_ok: bool = False
    healed: bool = False
    heal_s: float | None = None
    gap_s: float | None = None
    forwarder_gap_s: float | None = None
    wire_kept: bool | None = None
    leaked: int = 0
    problems: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return self.connected and self.ping_ok and self.healed and self.leaked == 0

    def summary(self) -> dict[str, Any]:
        """``connected``, ``ping_ok``, ``healed``, ``heal_ms``, ``gap_ms``, ``leaked``, then
        ``forwarder_gap_ms``, ``wire_kept`` and ``problems``."""
        return {
            "connected": self.connected,
            "ping_ok": self.ping_ok,
            "healed": self.healed,
            "heal_ms": _ms(self.heal_s),
            "gap_ms": _ms(self.gap_s),
            "leaked": self.leaked,
            "forwarder_gap_ms": _ms(self.forwarder_gap_s),
            "wire_kept": self.wire_kept,
            "problems": self.problems,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Progress:
    """Readable progress lines on a rich console: ``  1.23s text``, seconds since the demo
    started; sections as rules; what went well in green, faults in yellow, failures in red
    (plain text when the output is not a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.start = trio.current_time()

    def __call__(self, text: str, *, style: str = "") -> None:
        elapsed = trio.current_time() - self.start
        self.console.print(Text.assemble((f"{elapsed:6.2f}s ", "dim"), (text, style)))

    def good(self, text: str) -> None:
        self(text, style="green")

    def fault(self, text: str) -> None:
        self(text, style="yellow")

    def bad(self, text: str) -> None:
        self(text, style="bold red")

    def section(self, title: str) -> None:
        self.console.rule(Text(title, style="bold"), align="left")


class _Failed(Exception):
    """A phase of the demo did not happen (its reason is in the report)."""


_FAILURES = (_Failed, TrionsmError, OSError, subprocess.CalledProcessError)
"""What ends the demo early, reported: a missed condition, a role that would not start, a
kernel or ``ip`` refusal."""


@contextmanager
def _phase(report: DemoReport, say: Progress) -> Iterator[None]:
    """Record a failure of the block in the report (and on screen) instead of raising it."""
    try:
        yield
    except* _FAILURES as group:
        for exc in _leaves(group):
            _record(report, say, exc)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _record(report: DemoReport, say: Progress, exc: BaseException) -> None:
    problem = str(exc) if isinstance(exc, _Failed) else f"{type(exc).__name__}: {exc}"
    report.problems.append(problem)
    say.bad(f"FAILED: {problem}")


async def run_demo(progress: Progress | None = None) -> DemoReport:
    """Run the demo (needs root; in the main thread: it takes SIGTERM and SIGINT); its report.
    Never raises for a failed or interrupted phase: that is in the report's ``problems``, and
    the teardown and the leak check run anyway."""
    say = progress or Progress()
    report, inventory = DemoReport(), Inventory()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        await _run(say, report, inventory, signals)
    return report


async def _run(
    say: Progress, report: DemoReport, inventory: Inventory, signals: AsyncIterator[int]
) -> None:
    """The demo, its teardown and its leak check; SIGTERM or SIGINT during the scenario ends it
    early (reported), one during the teardown waits until it is done."""
    try:
        async with open_netmesh(inventory, start_timeout=STEP_TIMEOUT) as mesh:
            with _phase(report, say):
                async with trio.open_nursery() as nursery:

                    async def interrupt() -> None:
                        async for signum in signals:
                            raise _Failed(f"interrupted by {signal.Signals(signum).name}")

                    nursery.start_soon(interrupt)
                    await _scenario(mesh, say, report)
                    nursery.cancel_scope.cancel()
            say.section("teardown")
            say("stopping the NSC (its connection closes through the whole path), then the "
                "NSEs, forwarders, nsmgrs, the registry; deleting the namespaces")  # fmt: skip
    except* _FAILURES as group:
        for exc in _leaves(group):
            _record(report, say, exc)
    unclean = inventory.unclean
    report.problems += unclean
    leaks = await find_leaks(inventory)
    report.leaked = len(leaks) + sum(line.startswith("left behind") for line in unclean)
    say.section("leak check")
    say(f"checked {len(inventory.namespaces)} namespaces, {len(inventory.processes)} processes, "
        f"{len(inventory.paths)} paths, links with a trionsm: alias of "
        f"{', '.join(inventory.owners)}")  # fmt: skip
    for line in unclean:
        say.bad(f"  teardown: {line}")
    for line in leaks:
        say.bad(f"  left: {line}")
    (say.good if report.leaked == 0 else say.bad)(f"leaked: {report.leaked}")
    report.problems += [f"left: {line}" for line in leaks]


async def _scenario(mesh: NetMesh, say: Progress, report: DemoReport) -> None:
    say.section("building a two-node mesh in network namespaces")
    await mesh.add_bridge()
    say(f"bridge {mesh.bridge}: br0 169.254.200.254/24 (the nodes' network)")
    await mesh.add_registry()
    say(f"registry serving {mesh.registry_url} on the bridge")
    for index in (1, 2):
        node = await mesh.add_node(index, external_forwarder=index == 1)
        say(f"{node.name} ({node.netns}, {node.address}): trionsm node pid "
            f"{_pid(mesh, node.name)}, {node.nsmgr} on {node.nsmgr_url} and "
            f"{node.public_url}")  # fmt: skip
        where = f"pid {_pid(mesh, node.forwarder)}" if node.external else "in the node's tree"
        say(f"  {node.forwarder}: {where}, VXLAN from {node.address}")
    endpoints = {"nse-1": "169.254.101.0/24", "nse-2": "169.254.102.0/24"}
    for name, cidr in endpoints.items():
        pod = await mesh.add_endpoint(name, SERVICE, node="node-2", cidr=cidr)
        say(f"{name} on node-2: ICMP responder for {SERVICE!r} in {pod.netns}, pool {cidr}, "
            f"pid {_pid(mesh, name)}")  # fmt: skip

    say.section("connecting")
    nsc = await mesh.add_nsc("nsc-1", f"kernel://{SERVICE}/nsm-1", node="node-1")
    async with trio.open_nursery() as nursery:
        log = EventLog(mesh["nsc-1"])
        await nursery.start(log.serve)
        first = log.events[0]
        report.connected = True
        say.good(f"nsc-1 on node-1 connected to {first.endpoint}: {_wire(first)}")
        say(f"path: {' -> '.join(first.path)}")
        pinger = Pinger(nsc.netns_url, target=first.target)
        await nursery.start(pinger.serve)
        started = trio.current_time()
        await _bounded(pinger.wait_reply(after=started), "the first ping through the wire")
        say.good(f"ping {first.target} from nsc-1's namespace: answered, through the vWire "
            f"(every {pinger.interval * 1000:.0f} ms from now on)")  # fmt: skip
        try:
            await _forwarder_fault(mesh, say, report, log, pinger, nsc)
            await _endpoint_fault(mesh, say, report, log, pinger)
        finally:
            if pinger.replies:
                report.gap_s = pinger.longest_gap()
            say(f"pings: {len(pinger.replies)} answered of {pinger.sent}; longest gap over the "
                f"run {_ms(pinger.longest_gap())} ms")  # fmt: skip
            nursery.cancel_scope.cancel()


async def _forwarder_fault(
    mesh: NetMesh,
    say: Progress,
    report: DemoReport,
    log: EventLog,
    pinger: Pinger,
    nsc: Pod,
) -> None:
    forwarder = mesh.nodes["node-1"].forwarder
    say.section(f"fault 1: SIGKILL of {forwarder} (pid {_pid(mesh, forwarder)})")
    before = await link_index(nsc.netns, "nsm-1")
    killed = trio.current_time()
    await mesh.kill(forwarder)
    say.fault(f"{forwarder} killed (no cleanup: its wires stay in the kernel)")
    await mesh.restart(forwarder)
    say(f"{forwarder} started again on the same socket (pid {_pid(mesh, forwarder)}); it scans "
        f"for its wires and adopts what re-requests claim")  # fmt: skip
    restarted = trio.current_time()
    healed = None
    with trio.move_on_after(QUIET_HEAL):  # the path may also heal below the NSC, unseen
        healed = await log.wait_for(lambda e: e.kind == "healed", after=killed)
    if healed is not None:
        say.good(f"nsc-1: {healed.reason} ({_ms(healed.at - killed)} ms after the kill), "
            f"{healed.endpoint} {_wire(healed)}")  # fmt: skip
    else:
        say(f"nsc-1 saw no event within {QUIET_HEAL:g}s of the restart")
    since = healed.at if healed is not None else restarted
    await _bounded(_replies_since(pinger, since, 10), "pings after the forwarder's restart")
    after = await link_index(nsc.netns, "nsm-1")
    report.wire_kept = before is not None and before == after
    report.forwarder_gap_s = pinger.longest_gap(killed, trio.current_time())
    gap = f"longest ping gap since the kill {_ms(report.forwarder_gap_s)} ms"
    if report.wire_kept:
        say.good(f"wire adopted as it was: the same interface (ifindex {after}); {gap}")
    else:
        say.fault(f"wire replaced: a new interface (ifindex {before} -> {after}); {gap}")


async def _endpoint_fault(
    mesh: NetMesh,
    say: Progress,
    report: DemoReport,
    log: EventLog,
    pinger: Pinger,
) -> None:
    current = log.events[-1]
    victim = current.endpoint
    say.section(f"fault 2: death of {victim}, the NSE in use (pid {_pid(mesh, victim)})")
    killed = trio.current_time()
    await mesh.kill_pod(victim)
    say.fault(f"{victim} killed (SIGKILL), its pod's interfaces and namespace deleted")
    moved = await _bounded(
        log.wait_for(
            lambda e: e.kind in ("healed", "connected") and e.endpoint not in ("", victim),
            after=killed,
        ),
        f"a heal onto an NSE other than {victim}",
    )
    report.heal_s = moved.at - killed
    say.good(f"nsc-1 reselected {moved.endpoint}: {_wire(moved)} in {_ms(report.heal_s)} ms "
        f"(NSE death -> connection UP on the other NSE)")  # fmt: skip
    say(f"path: {' -> '.join(moved.path)}")
    kept = [address for address in (*moved.src, *moved.dst) if address in current.dst]
    kept += [address for address in moved.src if address in current.src]
    if kept:
        report.problems.append(f"the new connection still carries the old wire's {kept}")
        say.bad(report.problems[-1])
    target = moved.new_target(current.dst)
    pinger.target = target
    answered = await _bounded(
        pinger.wait_reply(after=moved.at, target=target), f"a ping answered at {target}"
    )
    report.healed = not kept
    report.ping_ok = True
    gap = pinger.longest_gap(killed, answered)
    say.good(f"ping {target} (new address): answered through the new wire; ping gap over the "
        f"fault {_ms(gap)} ms")  # fmt: skip


async def _replies_since(pinger: Pinger, since: float, count: int) -> None:
    """Wait for ``count`` replies later than ``since``."""
    while sum(at > since for at, _ in pinger.replies) < count:
        await pinger.wait_reply(after=pinger.replies[-1][0] if pinger.replies else since)


async def _bounded(awaitable: Any, what: str) -> Any:
    """``awaitable``'s result within :data:`STEP_TIMEOUT`, else :class:`_Failed` naming it."""
    with trio.move_on_after(STEP_TIMEOUT):
        return await awaitable
    raise _Failed(f"no {what} within {STEP_TIMEOUT:g}s")


def _pid(mesh: NetMesh, name: str) -> int | str:
    process = mesh[name].process
    return process.pid if process is not None else "?"


def _wire(event: Event) -> str:
    return f"{event.interface or '-'} {','.join(event.src)} -> {','.join(event.dst)}"


def summary_table(report: DemoReport) -> Table:
    """The report as a table: each check, its figure, and whether it passed."""
    table = Table(title="trionsm demo", title_justify="left")
    for column in ("check", "result", ""):
        table.add_column(column)

    def row(check: str, result: str, good: bool | None) -> None:
        mark = {True: "[green]ok[/]", False: "[red]FAILED[/]", None: "[yellow]note[/]"}[good]
        table.add_row(check, result, mark)

    row("connected (NSC on node-1 -> NSE on node-2, VXLAN)", str(report.connected),
        report.connected)  # fmt: skip
    row("ping through the wire, then through the new one", str(report.ping_ok), report.ping_ok)
    row("forwarder SIGKILL: longest ping gap", _figure(report.forwarder_gap_s), None)
    row("forwarder SIGKILL: wire adopted as it was", str(report.wire_kept),
        True if report.wire_kept else None)  # fmt: skip
    row("NSE death: healed onto the other NSE, new addresses", str(report.healed), report.healed)
    row("NSE death -> connection UP on the other NSE", _figure(report.heal_s), None)
    row("longest ping gap over the run", _figure(report.gap_s), None)
    row("left behind (namespaces, links, processes, sockets)", str(report.leaked),
        report.leaked == 0)  # fmt: skip
    return table


def _figure(seconds: float | None) -> str:
    return "-" if seconds is None else f"{_ms(seconds)} ms"


def print_json(report: DemoReport, out: Callable[[str], object] = print) -> None:
    """Print the report's summary as one JSON line."""
    out(json.dumps(report.summary()))
