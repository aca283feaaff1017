"""Property test: the real supervisor against a small, pure model of OTP's supervisor decisions.

Theory of operation. Hypothesis draws a supervisor (strategy, intensity 0..3, period 1..10 s, one to
four children with restart types and shutdown graces, or one template for SIMPLE_ONE_FOR_ONE) and a
list of operations: a child crashes, returns, or raises ``Shutdown`` (alone, or two children in
the same scheduling batch); ``terminate_child``, ``start_child``, ``restart_child``,
``delete_child``, a duplicate ``start_child``, ``terminate_child`` of an unknown id; or the mock
clock jumps. Each example runs in one ``trio.run`` under a ``MockClock`` without autojump, and
after each operation waits for quiescence with ``wait_all_tasks_blocked`` (never with sleeps). A
watchdog turns a deadlock into a failure instead of a hang.

:class:`OtpModel` is plain Python, no trio. It holds the children in start order (id, restart type,
running or not), how many times each id was started, a clock, and OTP's restart list, and it
follows ``supervisor.erl``:

* ``do_restart``: PERMANENT is always restarted; TRANSIENT only on an abnormal exit (a crash, not a
  return and not ``Shutdown``); TEMPORARY never, and its spec is removed. A child that is not
  restarted keeps its spec, stopped, except TEMPORARY ones and SIMPLE_ONE_FOR_ONE children, which
  are removed.
* ``add_restart`` before every restart: keep the stamps ``t >= now - period``, prepend ``now``, give
  up if more than ``intensity`` remain.
* ``restart/3``: ONE_FOR_ONE and SIMPLE_ONE_FOR_ONE restart the child alone. ONE_FOR_ALL stops the
  others in reverse start order (``terminate_children`` removes the TEMPORARY ones) and then starts,
  in order, every child that is not running, including children stopped earlier by
  ``terminate_child`` or by a normal exit (``start_children`` walks the whole list). REST_FOR_ONE
  does the same with the children after the one that exited.
* ``terminate_child`` keeps the spec, except for TEMPORARY children and on SIMPLE_ONE_FOR_ONE.
  ``restart_child`` and ``delete_child`` need a stopped child and do not count as restarts.
* Two exits queued together are handled one after the other; if handling the first one stops the
  second child (ONE_FOR_ALL, REST_FOR_ONE), the second exit is stale and ignored, as OTP's
  ``unlink_flush`` drops it.
* Giving up stops every child (reverse start order; concurrently for SIMPLE_ONE_FOR_ONE) and raises
  ``RestartIntensityExceeded`` out of ``open_supervisor``, unwrapped; the example ends there. A
  normal exit of the block stops every child the same way.

After each operation the test compares ``which_children`` (ids and RUNNING/STOPPED, in order) and
``count_children`` with the model, the number of start-function calls per id, the exact log of
starts, supervisor stops and own exits (which checks the start and stop orders), whether the
supervisor gave up, and that every incarnation that ended, stopped by the supervisor or on its own,
ran its cleanup inside ``cleanup_scope()`` past a checkpoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trionsm.supervision import (
    INFINITY,
    AlreadyPresent,
    AlreadyStarted,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildState,
    Restart,
    RestartIntensityExceeded,
    Shutdown,
    ShutdownTime,
    SimpleOneForOneError,
    Strategy,
    Supervisor,
    cleanup_scope,
    open_supervisor,
)

CRASH = "crash"
NORMAL = "normal"
SHUTDOWN = "shutdown"
EXITS = (CRASH, NORMAL, SHUTDOWN)
TEMPLATE = "w"
DEADLOCK_CUSHION = 1.0
"""Real seconds every task must stay blocked, outside a quiescence wait, to count as a deadlock."""

Event = tuple[Any, ...]
"""A log entry: ``("start", id, n)``, ``("exit", id, n, how)`` (ended on its own) or
``("stop", id, n)`` (stopped by its supervisor)."""
Token = tuple[str, int]
"""One incarnation: the child id and its start number (1, 2, ...)."""


# ---- the pure model ------------------------------------------------------------------------------


@attrs.define(eq=False)
class ModelChild:
    id: str
    restart: Restart
    running: bool = False
    dead: str | None = None
    """How it ended, while its exit waits in the mailbox (OTP: the 'EXIT' is not handled yet)."""


class OtpModel:
    """OTP's supervisor decisions over ids, restart types and a clock; no I/O, no trio."""

    def __init__(self, strategy: Strategy, intensity: int, period: float) -> None:
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.now = 0.0
        self.children: list[ModelChild] = []
        self.incarnations: dict[str, int] = {}
        self.restarts: list[float] = []  # newest first, as in OTP's #state.restarts
        self.events: list[Event] = []
        self.unordered_from: int | None = None  # start of a concurrent (SIMPLE) stop, any order
        self.gave_up_on: str | None = None
        self._serial = itertools.count(1)

    @property
    def simple(self) -> bool:
        return self.strategy is Strategy.SIMPLE_ONE_FOR_ONE

    @property
    def gave_up(self) -> bool:
        return self.gave_up_on is not None

    def running_tokens(self) -> set[Token]:
        return {(c.id, self.incarnations[c.id]) for c in self.children if c.running}

    def all_tokens(self) -> set[Token]:
        return {(cid, n) for cid, k in self.incarnations.items() for n in range(1, k + 1)}

    def removed_ids(self) -> list[str]:
        present = {c.id for c in self.children}
        return sorted(cid for cid in self.incarnations if cid not in present)

    # primitives

    def _start(self, child: ModelChild) -> None:
        self.incarnations[child.id] = self.incarnations.get(child.id, 0) + 1
        child.running = True
        self.events.append(("start", child.id, self.incarnations[child.id]))

    def _stop(self, child: ModelChild) -> None:
        if child.running and child.dead is None:
            self.events.append(("stop", child.id, self.incarnations[child.id]))
        # Stopping a child that already died flushes its pending exit (OTP's unlink_flush).
        child.running = False
        child.dead = None

    def _terminate_children(self, children: list[ModelChild]) -> None:
        """OTP's ``terminate_children``: stop in the given order, forget the TEMPORARY ones."""
        for child in children:
            self._stop(child)
            if child.restart is Restart.TEMPORARY:
                self.children.remove(child)

    def _start_children(self, children: list[ModelChild]) -> None:
        """OTP's ``start_children`` over a list whose running members were just stopped."""
        for child in children:
            if not child.running:
                self._start(child)

    def stop_all(self) -> None:
        """The supervisor ends (gives up or its block exits): stop everyone, keep the list."""
        if self.simple:
            self.unordered_from = len(self.events)
        for child in reversed(self.children):
            self._stop(child)

    def _add_restart(self) -> bool:
        threshold = self.now - self.period
        kept = itertools.takewhile(lambda stamp: stamp >= threshold, self.restarts)
        self.restarts = [self.now, *kept]
        return len(self.restarts) <= self.intensity

    def _restart(self, child: ModelChild) -> None:
        if not self._add_restart():
            self.gave_up_on = child.id
            self.stop_all()
            return
        if self.strategy is Strategy.ONE_FOR_ALL:
            self._terminate_children([c for c in reversed(self.children) if c is not child])
            self._start_children(list(self.children))
        elif self.strategy is Strategy.REST_FOR_ONE:
            index = self.children.index(child)
            self._terminate_children(list(reversed(self.children[index + 1 :])))
            self._start_children(self.children[index:])
        else:
            self._start(child)

    # operations

    def init(self, specs: list[tuple[str, Restart]]) -> None:
        for child_id, restart in specs:
            self.add_child(child_id, restart)

    def next_simple_id(self) -> str:
        return f"{TEMPLATE}#{next(self._serial)}"

    def add_child(self, child_id: str, restart: Restart) -> None:
        child = ModelChild(child_id, restart)
        self.children.append(child)
        self._start(child)

    def exit(self, child: ModelChild, how: str) -> None:
        """The running ``child`` ended on its own and the supervisor handles it at once."""
        self.died(child, how)
        self.handle_exit(child)

    def died(self, child: ModelChild, how: str) -> None:
        """The running ``child`` ended on its own; its exit is queued in the mailbox."""
        assert child.running
        assert child.dead is None
        self.events.append(("exit", child.id, self.incarnations[child.id], how))
        child.dead = how

    def handle_exit(self, child: ModelChild) -> None:
        """The supervisor takes the exit from its mailbox: OTP's ``do_restart``."""
        how = child.dead
        if how is None or self.gave_up or child not in self.children:
            return  # stale: the supervisor stopped (and forgot) that incarnation meanwhile
        child.running = False
        child.dead = None
        if child.restart is Restart.PERMANENT or (
            child.restart is Restart.TRANSIENT and how == CRASH
        ):
            self._restart(child)
        elif self.simple or child.restart is Restart.TEMPORARY:
            self.children.remove(child)

    def terminate(self, child: ModelChild) -> None:
        self._stop(child)
        if self.simple or child.restart is Restart.TEMPORARY:
            self.children.remove(child)

    def restart_child(self, child: ModelChild) -> None:
        assert not child.running
        self._start(child)

    def delete_child(self, child: ModelChild) -> None:
        assert not child.running
        self.children.remove(child)


# ---- the real side -------------------------------------------------------------------------------


class ChildCrash(Exception):
    """What a child raises when told to crash (an abnormal exit)."""


@attrs.define
class Harness:
    """Controllable children: every incarnation logs its life and waits for one command."""

    events: list[Event] = attrs.Factory(list)
    incarnations: dict[str, int] = attrs.Factory(dict)
    inboxes: dict[str, tuple[int, trio.MemorySendChannel[str]]] = attrs.Factory(dict)
    cleaned: set[Token] = attrs.Factory(set)
    every_inbox: list[trio.MemorySendChannel[str]] = attrs.Factory(list)
    step: str = "start-up"

    async def child(self, child_id: str, *, task_status: Any) -> None:
        number = self.incarnations[child_id] = self.incarnations.get(child_id, 0) + 1
        send, receive = trio.open_memory_channel[str](1)
        self.inboxes[child_id] = (number, send)
        self.every_inbox.append(send)
        self.events.append(("start", child_id, number))
        task_status.started(number)
        how: str | None = None
        try:
            try:
                how = await receive.receive()
            except trio.Cancelled:
                self.events.append(("stop", child_id, number))
                raise
            if how == CRASH:
                raise ChildCrash(f"{child_id} #{number} crashed")
            if how == SHUTDOWN:
                raise Shutdown(f"{child_id} #{number} shut down")
        finally:
            with cleanup_scope():
                await trio.lowlevel.checkpoint()  # cancelled unless the cleanup window is open
                self.cleaned.add((child_id, number))
            if how is not None:
                # Logged after the last checkpoint, so the log has exits in mailbox order.
                self.events.append(("exit", child_id, number, how))

    def release_all(self) -> None:
        """Deadlock escape: every incarnation still waiting, even one its supervisor lost, ends."""
        for send in self.every_inbox:
            send.close()

    def command(self, child_id: str, number: int, how: str) -> None:
        current, send = self.inboxes[child_id]
        assert current == number, f"{child_id}: incarnation {current} runs, model expects {number}"
        send.send_nowait(how)


def _normalised(events: list[Event], unordered_from: int | None) -> list[Event]:
    if unordered_from is None:
        return list(events)
    return events[:unordered_from] + sorted(events[unordered_from:], key=repr)


def check(model: OtpModel, harness: Harness, sup: Supervisor) -> None:
    rows = sup.which_children()
    expected = [
        (c.id, ChildState.RUNNING if c.running else ChildState.STOPPED) for c in model.children
    ]
    assert [(row.id, row.state) for row in rows] == expected
    count = sup.count_children()
    assert count.active == sum(1 for c in model.children if c.running)
    if not model.simple:
        # Not compared on SIMPLE_ONE_FOR_ONE: OTP answers specs=1 (the template), this supervisor
        # answers the number of children. A deliberate deviation or not, it is not a decision.
        assert count.specs == len(model.children)
    assert harness.incarnations == model.incarnations
    assert _normalised(harness.events, model.unordered_from) == _normalised(
        model.events, model.unordered_from
    )
    assert harness.cleaned == model.all_tokens() - model.running_tokens()


# ---- cases ---------------------------------------------------------------------------------------

SHUTDOWNS: list[ShutdownTime | None] = [None, 1.0, INFINITY]
OPERATION_KINDS = (
    CRASH,
    CRASH,
    NORMAL,
    SHUTDOWN,
    "terminate",
    "start_child",
    "advance",
    "advance",
    "restart_child",
    "delete_child",
    "start_duplicate",
    "terminate_missing",
    "exit_two",
)


@attrs.frozen
class Case:
    strategy: Strategy
    intensity: int
    period: float
    children: tuple[tuple[Restart, ShutdownTime | None], ...]
    operations: tuple[tuple[Any, ...], ...]


@st.composite
def operations(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(OPERATION_KINDS))
    if kind == "start_child":
        return (kind, draw(st.sampled_from(Restart)))
    if kind == "advance":
        # In quarters of the period: exact floats, and often exactly one period (the window's
        # edge, where OTP still counts the old restart).
        return (kind, draw(st.one_of(st.just(4), st.integers(1, 8))))
    if kind == "exit_two":
        how = st.sampled_from(EXITS)
        return (kind, draw(st.integers(0, 7)), draw(st.integers(0, 7)), draw(how), draw(how))
    return (kind, draw(st.integers(0, 7)))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    strategy = draw(st.sampled_from(Strategy))
    simple = strategy is Strategy.SIMPLE_ONE_FOR_ONE
    count = 1 if simple else draw(st.integers(1, 4))
    child = st.tuples(st.sampled_from(Restart), st.sampled_from(SHUTDOWNS))
    # A SIMPLE_ONE_FOR_ONE supervisor starts empty: begin with a few start_child calls.
    prefix = [("start_child", Restart.PERMANENT)] * (draw(st.integers(1, 3)) if simple else 0)
    return Case(
        strategy=strategy,
        intensity=draw(st.integers(0, 3)),
        period=float(draw(st.integers(1, 10))),
        children=tuple(draw(st.lists(child, min_size=count, max_size=count))),
        operations=(*prefix, *draw(st.lists(operations(), min_size=1, max_size=25))),
    )


# ---- running a case ------------------------------------------------------------------------------


async def apply(
    op: tuple[Any, ...],
    sup: Supervisor,
    model: OtpModel,
    harness: Harness,
    clock: trio.testing.MockClock,
    case: Case,
) -> Callable[[], None] | None:
    """Do ``op`` on the supervisor and the model; return what to do to the model once quiescent."""
    kind = op[0]
    if kind == "advance":
        delta = case.period * op[1] / 4
        clock.jump(delta)
        model.now += delta
        assert trio.current_time() == model.now
        return None
    if kind == "start_child":
        if model.simple:
            child_id = model.next_simple_id()
            handle = await sup.start_child(child_id)
            model.add_child(child_id, case.children[0][0])
        else:
            child_id = f"n{len(model.incarnations)}"
            assert child_id not in model.incarnations
            spec = ChildSpec(child_id, partial(harness.child, child_id), restart=op[1])
            handle = await sup.start_child(spec)
            model.add_child(child_id, op[1])
        assert (handle.id, handle.value) == (child_id, model.incarnations[child_id])
        return None
    if kind == "terminate_missing":
        removed = model.removed_ids()
        missing = removed[op[1] % len(removed)] if removed else "missing"
        with pytest.raises(ChildNotFound):
            await sup.terminate_child(missing)
        return None
    if not model.children:
        return None
    child = model.children[op[1] % len(model.children)]
    if kind == "exit_two":
        other = model.children[op[2] % len(model.children)]
        if other is child or not (child.running and other.running):
            return None
        return exit_two(model, harness, (child, op[3]), (other, op[4]))
    if kind in EXITS:
        if child.running:
            harness.command(child.id, model.incarnations[child.id], kind)
            model.exit(child, kind)
    elif kind == "terminate":
        await sup.terminate_child(child.id)
        model.terminate(child)
    elif kind in ("restart_child", "delete_child") and model.simple:
        with pytest.raises(SimpleOneForOneError):
            await getattr(sup, kind)(child.id)
    elif kind in ("restart_child", "delete_child") and child.running:
        with pytest.raises(ChildRunning):
            await getattr(sup, kind)(child.id)
    elif kind == "restart_child":
        handle = await sup.restart_child(child.id)
        model.restart_child(child)
        assert handle.value == model.incarnations[child.id]
    elif kind == "delete_child":
        await sup.delete_child(child.id)
        model.delete_child(child)
    elif kind == "start_duplicate" and not model.simple:
        spec = ChildSpec(child.id, partial(harness.child, child.id))
        with pytest.raises(AlreadyStarted if child.running else AlreadyPresent):
            await sup.start_child(spec)
    return None


def exit_two(
    model: OtpModel, harness: Harness, *exits: tuple[ModelChild, str]
) -> Callable[[], None]:
    """Two children end in the same scheduling batch, so both exits are queued before the
    supervisor handles either. Trio picks the order (deterministically under Hypothesis); it is
    read back from the children's log, which records the exits in mailbox order. The model then
    handles the first exit fully, and the second one unless the first one's strategy stopped it
    (then it is stale, as OTP's unlink_flush drops it)."""
    mark = len(harness.events)
    for child, how in exits:
        harness.command(child.id, model.incarnations[child.id], how)

    def resolve() -> None:
        order = [event[1] for event in harness.events[mark:] if event[0] == "exit"]
        ranked = sorted(exits, key=lambda e: order.index(e[0].id) if e[0].id in order else 2)
        for child, how in ranked:
            model.died(child, how)
        for child, _ in ranked:
            model.handle_exit(child)

    return resolve


async def run_example(case: Case, clock: trio.testing.MockClock, harness: Harness) -> None:
    model = OtpModel(case.strategy, case.intensity, case.period)
    if model.simple:
        restart, shutdown = case.children[0]
        specs = [ChildSpec(TEMPLATE, harness.child, restart=restart, shutdown=shutdown)]
    else:
        specs = [
            ChildSpec(f"c{i}", partial(harness.child, f"c{i}"), restart=restart, shutdown=shutdown)
            for i, (restart, shutdown) in enumerate(case.children)
        ]
        model.init([(spec.id, spec.restart) for spec in specs])
    sup: Supervisor | None = None
    failure: RestartIntensityExceeded | None = None
    try:
        async with open_supervisor(
            specs, strategy=case.strategy, intensity=case.intensity, period=case.period
        ) as sup:
            await trio.testing.wait_all_tasks_blocked()
            check(model, harness, sup)
            for index, op in enumerate(case.operations):
                harness.step = f"operation {index} {op}"
                resolve = await apply(op, sup, model, harness, clock, case)
                try:
                    # If the supervisor gives up, this is where the block is cancelled.
                    await trio.testing.wait_all_tasks_blocked()
                finally:
                    if resolve is not None:
                        resolve()
                assert not model.gave_up, "the model gave up but the supervisor did not"
                check(model, harness, sup)
            harness.step = "leaving the supervisor's block"
    except RestartIntensityExceeded as exc:  # raised unwrapped, or this would not catch it
        failure = exc
    assert sup is not None
    assert sup.stopped
    if failure is None:
        model.stop_all()  # the block ended normally
    else:
        assert model.gave_up, f"the supervisor gave up but the model did not: {failure}"
        assert failure.child_id == model.gave_up_on
    check(model, harness, sup)


async def watchdog(harness: Harness, scope: trio.CancelScope, deadlocks: list[str]) -> None:
    """Turn a hang into a failure. Nothing in an example waits on time (the mock clock only moves
    on ``advance``), so every task blocked for a while in real time, with the example not in its own
    ``wait_all_tasks_blocked()`` (a shorter cushion, woken first), is a deadlock."""
    await trio.testing.wait_all_tasks_blocked(cushion=DEADLOCK_CUSHION)
    deadlocks.append(harness.step)
    harness.release_all()
    scope.cancel()


async def run_case(case: Case, clock: trio.testing.MockClock) -> None:
    harness = Harness()
    deadlocks: list[str] = []
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog, harness, nursery.cancel_scope, deadlocks)
        try:
            await run_example(case, clock, harness)
        except Exception as exc:  # re-raised below, outside the nursery, so not in a group
            failure = exc
        nursery.cancel_scope.cancel()
    assert not deadlocks, f"deadlock: every task blocked during {deadlocks[0]}"
    if failure is not None:
        raise failure


def _case(strategy: Strategy, intensity: int, restarts: str, *ops: tuple[Any, ...]) -> Case:
    """A hand-written case: ``restarts`` has one letter per child (P, T or E for temporary)."""
    types = {"P": Restart.PERMANENT, "T": Restart.TRANSIENT, "E": Restart.TEMPORARY}
    return Case(strategy, intensity, 1.0, tuple((types[r], None) for r in restarts), ops)


@settings(max_examples=150)
@given(case=cases())
# A restart exactly one period old still counts (OTP keeps t >= now - period) ...
@example(_case(Strategy.ONE_FOR_ONE, 1, "P", (CRASH, 0), ("advance", 4), (CRASH, 0)))
# ... and one a little older does not.
@example(_case(Strategy.ONE_FOR_ONE, 1, "P", (CRASH, 0), ("advance", 5), (CRASH, 0)))
# REST_FOR_ONE leaves a stopped child before the one that died alone.
@example(
    _case(Strategy.REST_FOR_ONE, 3, "TPP", (NORMAL, 0), (CRASH, 1), ("terminate", 2), (CRASH, 1))
)
# ONE_FOR_ALL starts every child again, one stopped by terminate_child too; TEMPORARY ones go.
@example(_case(Strategy.ONE_FOR_ALL, 3, "PEP", ("terminate", 0), (CRASH, 2)))
# Two exits queued at once: the second is stale once the first one's restart stopped it.
@example(_case(Strategy.ONE_FOR_ALL, 3, "PP", ("exit_two", 0, 1, CRASH, CRASH)))
@example(_case(Strategy.REST_FOR_ONE, 3, "PPT", ("exit_two", 2, 0, CRASH, NORMAL)))
def test_supervisor_matches_otp_model(case: Case) -> None:
    clock = trio.testing.MockClock()
    trio.run(run_case, case, clock, clock=clock)
