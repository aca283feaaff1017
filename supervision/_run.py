"""One incarnation of a child: its cancel scope, exit reason and cleanup window.

Theory of operation. The supervisor runs every child inside its own *shielded* cancel scope, so that
nothing but the supervisor can stop it: an outer cancellation (the parent being cancelled, Ctrl-C)
reaches the supervisor's body, which then stops the children one by one in reverse start order. To
stop a child the supervisor records the request time and cancels that scope. The child's cleanup
runs inside :func:`cleanup_scope`, a shielded scope whose deadline is the request time plus the
child's ``shutdown`` grace (already cancelled for BRUTAL_KILL, no deadline for INFINITY). Cleanup
written as a plain ``finally:`` without :func:`cleanup_scope` gets no window at all: its first
checkpoint is cancelled.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import trio

from ._spec import BRUTAL_KILL, DEFAULT_WORKER_SHUTDOWN, IGNORE, INFINITY, ShutdownTime
from .errors import Shutdown

__all__ = ["Exit", "ExitKind", "cleanup_scope"]


class ExitKind(enum.Enum):
    """How an incarnation ended, in OTP's terms."""

    NORMAL = "normal"
    """The start function returned."""
    SHUTDOWN = "shutdown"
    """Stopped by its supervisor, or it raised :class:`Shutdown`."""
    ABNORMAL = "abnormal"
    """It raised any other exception."""


@attrs.frozen
class Exit:
    """The exit reason of one incarnation."""

    kind: ExitKind
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        return self.kind is ExitKind.ABNORMAL

    def __str__(self) -> str:
        if self.error is None:
            return self.kind.value
        return f"{self.kind.value}: {type(self.error).__name__}: {self.error}"


_CURRENT: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "trionsm_supervision_run", default=None
)


@attrs.define(eq=False)
class _Run:
    """Book-keeping for one incarnation (never shared outside the package)."""

    child_id: str
    grace: ShutdownTime
    slot: dict[str, Any] = attrs.field(factory=dict)  # shared by every incarnation of the child
    claimed: bool = False  # the child's own serve_actor has taken the slot's ActorRef
    scope: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(shield=True))
    done: trio.Event = attrs.field(factory=trio.Event)
    started: bool = False
    value: Any = None
    exit: Exit | None = None
    stop_requested_at: float | None = None
    crash: BaseException | None = None  # the exit reason of a crash on request

    @property
    def ignored(self) -> bool:
        return self.started and self.value is IGNORE

    def request_stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = trio.current_time()
        self.scope.cancel()

    def request_crash(self, error: BaseException) -> None:
        """End this incarnation abnormally with ``error`` (unless it is already stopping)."""
        if self.stop_requested_at is None and self.crash is None:
            self.crash = error
            self.scope.cancel()


def _claim_child_slot() -> tuple[str, dict[str, Any]] | None:
    """The current child's id and slot, for the first caller in this incarnation only.

    ``serve_actor`` uses it to keep one ActorRef per child id across restarts; a sub-actor started
    later inside the same child gets None (and its own ref).
    """
    run = _CURRENT.get()
    if run is None or run.claimed:
        return None
    run.claimed = True
    return run.child_id, run.slot


@contextmanager
def cleanup_scope() -> Iterator[trio.CancelScope]:
    """A shielded scope for cleanup that must run when the current child is stopped.

    Its deadline is the moment the supervisor asked the child to stop (or now, if the child is
    exiting on its own) plus the child's ``shutdown`` grace: INFINITY has no deadline, BRUTAL_KILL
    starts cancelled. Outside any supervised child the grace is the worker default, 5 seconds. Use
    it in a ``finally:`` block::

        try:
            await serve()
        finally:
            with cleanup_scope():
                await close_downstream()

    Blocks nothing by itself; what runs inside is cancelled when the window closes.
    """
    run = _CURRENT.get()
    grace: ShutdownTime = run.grace if run is not None else DEFAULT_WORKER_SHUTDOWN
    with trio.CancelScope(shield=True) as scope:
        if grace is BRUTAL_KILL:
            scope.cancel()
        elif grace is not INFINITY:
            assert isinstance(grace, float)
            begin = trio.current_time()
            if run is not None and run.stop_requested_at is not None:
                begin = run.stop_requested_at
            scope.deadline = begin + grace
        yield scope


class _ChildStatus:
    """The ``task_status`` handed to a child's start function.

    It drops Trio's own task status once ``started()`` has been passed on: Trio's keeps the
    temporary nursery of ``nursery.start()`` alive, about 1 KiB per idle child.
    """

    __slots__ = ("_outer", "_run")

    def __init__(self, run: _Run, outer: trio.TaskStatus[Any]) -> None:
        self._run = run
        self._outer: trio.TaskStatus[Any] | None = outer

    def fail(self, failure: _StartFailed) -> None:
        """Report that the child ended before ``started()``."""
        assert self._outer is not None
        self._outer.started(failure)
        self._outer = None

    def started(self, value: Any = None) -> None:
        if self._run.started:
            raise RuntimeError(f"child {self._run.child_id!r} called task_status.started() twice")
        self._run.started = True
        self._run.value = value
        if value is IGNORE:
            # OTP's `ignore`: no process. A start function that keeps running after it is stopped.
            self._run.scope.cancel()
        outer, self._outer = self._outer, None
        assert outer is not None
        outer.started(value)


@attrs.frozen
class _StartFailed:
    """What the wrapper reports when the child ended before ``started()``."""

    exit: Exit


async def _run_incarnation(
    run: _Run, start: Any, args: tuple[Any, ...], status: _ChildStatus
) -> None:
    """Run one incarnation to its end, recording ``run.exit``; never raises an Exception.

    Reports a start failure through ``status`` as a :class:`_StartFailed` value. Cancellation
    from outside the (shielded) run scope and BaseExceptions such as KeyboardInterrupt propagate.
    """
    token = _CURRENT.set(run)
    try:
        with run.scope:
            try:
                await start(*args, task_status=status)
            except Shutdown as exc:
                run.exit = Exit(ExitKind.SHUTDOWN, exc)
            except Exception as exc:
                run.exit = Exit(ExitKind.ABNORMAL, exc)
            else:
                run.exit = Exit(ExitKind.NORMAL)
        if run.exit is None and run.crash is not None:
            run.exit = Exit(ExitKind.ABNORMAL, run.crash)  # crashed on request
        elif run.exit is None:
            # Cancelled through its own scope: stopped by the supervisor.
            run.exit = Exit(ExitKind.SHUTDOWN)
        if not run.started:
            if run.exit.kind is ExitKind.NORMAL:
                error = RuntimeError(
                    "start function returned without calling task_status.started()"
                )
                run.exit = Exit(ExitKind.ABNORMAL, error)
            status.fail(_StartFailed(run.exit))
    finally:
        _CURRENT.reset(token)
        run.done.set()
