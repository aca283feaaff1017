"""The supervisor: OTP's ``supervisor`` behaviour on a Trio nursery.

Theory of operation. ``open_supervisor`` opens a nursery holding one *control task* and one wrapper
task per child. Each child runs in its own shielded cancel scope (see ``_run``), so only the
supervisor stops children. The control task owns every decision: it takes messages one at a time
from an unbounded mailbox (child exits, try-again restarts, and the requests made through the public
methods), exactly like OTP's ``gen_server`` loop, so start, restart and terminate are serialised and
a ``terminate_child`` or a shutdown can slip in between two restart attempts.

On a child exit the control task decides from the restart type and the exit reason, checks the
restart intensity *before* restarting, and applies the strategy. A restart that fails to start is
retried through the mailbox (``try_again_restart``), each retry counting against the intensity. When
the intensity is exceeded, or a significant child triggers ``auto_shutdown``, the control task
cancels the supervisor's body; the body's ``finally`` stops every child (reverse start order, one at
a time, or all at once for SIMPLE_ONE_FOR_ONE) and ``open_supervisor`` then raises
:class:`RestartIntensityExceeded` unwrapped, or returns normally after an auto shutdown.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar, cast

import attrs
import trio

from ._groups import lone_exception
from ._intensity import RestartIntensity
from ._run import Exit, ExitKind, _ChildStatus, _Run, _run_incarnation, _StartFailed
from ._spec import (
    IGNORE,
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
    SupervisorOptions,
)
from ._tree import ChildCount, ChildInfo, ChildNode, ChildState, SupervisorTree
from .errors import (
    AlreadyPresent,
    AlreadyStarted,
    ChildNotFound,
    ChildNotRunning,
    ChildRunning,
    Crashed,
    RestartIntensityExceeded,
    SimpleOneForOneError,
    StartError,
    SupervisionError,
    SupervisorStopped,
)

__all__ = [
    "ChildHandle",
    "Supervisor",
    "nested_supervisor",
    "open_supervisor",
    "serve_supervisor",
    "supervisor_spec",
]

T = TypeVar("T")


@attrs.frozen(eq=False)
class ChildHandle:
    """What ``start_child`` returns (OTP's ``{ok, Pid}``).

    Attributes:
        id: the child's id; for SIMPLE_ONE_FOR_ONE children a generated ``"<template>#<n>"``.
        value: what the child passed to ``task_status.started()``; ``IGNORE`` if it started nothing.
    """

    id: str
    value: Any

    @property
    def ignored(self) -> bool:
        return self.value is IGNORE


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    id: str
    args: tuple[Any, ...] = ()
    run: _Run | None = None
    state: ChildState = ChildState.STOPPED
    restarts: int = 0
    started_once: bool = False
    last_exit: Exit | None = None
    slot: dict[str, Any] = attrs.field(factory=dict)

    @property
    def alive(self) -> bool:
        """OTP's ``pid =/= undefined``: running, starting, stopping or waiting to restart."""
        return self.state is not ChildState.STOPPED


@attrs.frozen
class _Exited:
    child: _Child
    run: _Run


@attrs.frozen
class _TryAgain:
    child: _Child


@attrs.define(eq=False)
class _Reply:
    event: trio.Event = attrs.field(factory=trio.Event)
    value: Any = None
    error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.value, self.error = value, error
            self.event.set()

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@attrs.frozen
class _Request:
    operation: Callable[[], Awaitable[Any]]
    reply: _Reply


def _should_restart(restart: Restart, exit: Exit) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exit.kind is ExitKind.ABNORMAL
    return False


class Supervisor:
    """A handle on a running supervisor; obtained from ``open_supervisor``/``serve_supervisor``.

    The request methods (``start_child``, ``terminate_child``, ``restart_child``, ``delete_child``)
    are serialised through the supervisor's control task and wait for it; a child must not call them
    on its own supervisor from its start function (it would wait for itself, as in OTP). The query
    methods (``which_children``, ``count_children``, ``tree``) are synchronous snapshots.
    """

    def __init__(self, options: SupervisorOptions, children: list[ChildSpec]) -> None:
        self._options = options
        self._intensity = RestartIntensity(options.intensity, options.period)
        self._simple = options.strategy is Strategy.SIMPLE_ONE_FOR_ONE
        self._template = children[0] if self._simple else None
        # One dict keeps both the lookup and the start order (insertion order): removing a child
        # is O(1) even with 100,000 SIMPLE_ONE_FOR_ONE children.
        initial = [] if self._simple else [_Child(s, s.id) for s in children]
        self._by_id: dict[str, _Child] = {c.id: c for c in initial}
        self._serial = itertools.count(1)
        self._send, self._recv = trio.open_memory_channel[Any](float("inf"))
        self._nursery: trio.Nursery | None = None
        self._loop_scope = trio.CancelScope()
        self._loop_done = trio.Event()
        self._loop_started = False
        self._closed = False
        self._failure: RestartIntensityExceeded | None = None
        self._auto_shutdown = False

    # ---- public API ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._options.name

    @property
    def strategy(self) -> Strategy:
        return self._options.strategy

    @property
    def stopped(self) -> bool:
        """True once the supervisor has begun stopping; it takes no more requests."""
        return self._closed

    async def start_child(self, *args: Any) -> ChildHandle:
        """Start a dynamic child and return its handle.

        SIMPLE_ONE_FOR_ONE: ``start_child(*extra_args)`` calls the template's
        ``start(*extra_args, task_status=...)``. Otherwise: ``start_child(spec)`` adds ``spec``
        last.

        Raises:
            StartError: it failed before ``started()`` (its spec is not kept).
            AlreadyStarted, AlreadyPresent: the id is taken.
            ValueError: an invalid spec.
            SupervisorStopped: the supervisor is stopping.
        """
        if self._simple:
            return await self._request(partial(self._do_start_simple, args))
        if len(args) != 1 or not isinstance(args[0], ChildSpec):
            raise ValueError("start_child takes one ChildSpec (except on SIMPLE_ONE_FOR_ONE)")
        spec = args[0]
        self._options.check_spec(spec)
        return await self._request(partial(self._do_start_spec, spec))

    async def terminate_child(self, child: str | ChildHandle) -> None:
        """Stop a child (with its shutdown grace) and wait until it has stopped.

        The spec is kept (so ``restart_child`` can start it again) unless the child is TEMPORARY or
        the supervisor is SIMPLE_ONE_FOR_ONE. Stopping a child waiting to be restarted cancels the
        pending restart. Raises :class:`ChildNotFound`.
        """
        child_id = child.id if isinstance(child, ChildHandle) else child
        await self._request(partial(self._do_terminate, child_id))

    async def restart_child(self, child_id: str) -> ChildHandle:
        """Start again a child whose spec is kept but which is not running.

        It does not count against the restart intensity (``ChildInfo.restarts`` still counts it).

        Raises ChildNotFound, ChildRunning (running or restarting), StartError,
        SimpleOneForOneError.
        """
        if self._simple:
            raise SimpleOneForOneError("restart_child is not allowed on SIMPLE_ONE_FOR_ONE")
        return await self._request(partial(self._do_restart_child, child_id))

    async def delete_child(self, child_id: str) -> None:
        """Forget the spec of a child that is not running.

        Raises ChildNotFound, ChildRunning, SimpleOneForOneError.
        """
        if self._simple:
            raise SimpleOneForOneError("delete_child is not allowed on SIMPLE_ONE_FOR_ONE")
        await self._request(partial(self._do_delete_child, child_id))

    async def crash_child(self, path: str, reason: str = "crashed on request") -> ChildInfo:
        """Crash a running child (fault injection): it exits abnormally with :class:`Crashed`.

        Its supervisor then applies its restart policy, counted against its intensity, as for
        any crash. ``path`` is a child id of this supervisor or a path as
        :meth:`SupervisorTree.walk` gives it (this supervisor's name, then child ids), which
        descends into child supervisors (see :func:`nested_supervisor`). The crashed child's
        cleanup runs as when it is stopped (its ``cleanup_scope()`` window counts from now).

        Returns the child's row as it was just before the crash, once that incarnation has
        ended and its supervisor has handled the exit: a restarted child is running again (or
        waits for a try-again restart), a TEMPORARY one is gone.

        Raises:
            ChildNotFound: no child at ``path`` (named in the error).
            ChildNotRunning: the child is starting, restarting, stopping or stopped.
            SupervisorStopped: the supervisor holding it is stopping.
        """
        owner, child_id = self._locate(path)
        info, run = await owner._request(partial(owner._do_crash, child_id, path, reason))
        await run.done.wait()
        # The exit is queued on the owner's mailbox by now: one more request behind it returns
        # once the owner has handled it (restarted the child, or given up).
        with contextlib.suppress(SupervisorStopped):
            await owner._request(_nothing)
        return info

    def _locate(self, path: str) -> tuple[Supervisor, str]:
        """The supervisor holding the child at ``path`` and that child's id.

        Child ids may contain ``/``: at each level the longest id that the rest of the path
        starts with is taken.
        """
        rest = path
        if rest.startswith(f"{self.name}/"):
            rest = rest[len(self.name) + 1 :]
        elif "/" in rest and rest not in self._by_id:
            raise ChildNotFound(path)
        owner: Supervisor = self
        while rest not in owner._by_id:
            prefixes = [i for i in owner._by_id if rest.startswith(f"{i}/")]
            child = owner._by_id[max(prefixes, key=len)] if prefixes else None
            run = child.run if child is not None else None
            inner = nested_supervisor(run.value) if run is not None and run.started else None
            if child is None or inner is None:
                raise ChildNotFound(path)
            owner, rest = inner, rest[len(child.id) + 1 :]
        return owner, rest

    def which_children(self) -> list[ChildInfo]:
        """A snapshot of every child, in start order (OTP's ``which_children``)."""
        return [self._info(c) for c in self._order]

    def count_children(self) -> ChildCount:
        """Counts of specs, running children, supervisors and workers (OTP's ``count_children``).

        As in OTP, a SIMPLE_ONE_FOR_ONE supervisor has one spec (its template) and counts every
        dynamic child as a supervisor or a worker by the template's type.
        """
        children = self._by_id.values()
        active = sum(1 for c in children if c.state is ChildState.RUNNING)
        supervisors = sum(1 for c in children if c.spec.type is ChildType.SUPERVISOR)
        workers = len(children) - supervisors
        specs = 1 if self._simple else len(children)
        return ChildCount(specs=specs, active=active, supervisors=supervisors, workers=workers)

    def tree(self) -> SupervisorTree:
        """A snapshot of this supervisor and, recursively, every child supervisor below it."""
        nodes = []
        for child in self._order:
            value = child.run.value if child.run is not None and child.run.started else None
            nested = nested_supervisor(value)
            subtree = nested.tree() if nested is not None else None
            nodes.append(
                ChildNode(
                    id=child.id,
                    state=child.state,
                    type=child.spec.type,
                    restart=child.spec.restart,
                    restarts=child.restarts,
                    last_exit=str(child.last_exit) if child.last_exit is not None else None,
                    value=repr(value) if value is not None else None,
                    supervisor=subtree,
                )
            )
        return SupervisorTree(
            name=self.name,
            strategy=self._options.strategy,
            intensity=self._options.intensity,
            period=self._options.period,
            recent_restarts=self._intensity.recent(trio.current_time()),
            children=tuple(nodes),
        )

    # ---- requests (run inside the control task) --------------------------------------------

    async def _request(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self._closed:
            raise SupervisorStopped(f"supervisor {self.name!r} is stopped")
        reply = _Reply()
        self._send.send_nowait(_Request(operation, reply))
        await reply.event.wait()
        return cast(T, reply.unwrap())

    async def _do_start_simple(self, args: tuple[Any, ...]) -> ChildHandle:
        assert self._template is not None
        child = _Child(self._template, f"{self._template.id}#{next(self._serial)}", args)
        self._add(child)
        try:
            await self._start(child)
        except StartError:
            self._remove(child)
            raise
        if child.state is ChildState.STOPPED:  # ignored
            self._remove(child)
            return ChildHandle(child.id, IGNORE)
        return self._handle(child)

    async def _do_start_spec(self, spec: ChildSpec) -> ChildHandle:
        existing = self._by_id.get(spec.id)
        if existing is not None:
            if existing.state is ChildState.RUNNING and existing.run is not None:
                raise AlreadyStarted(spec.id, existing.run.value)
            raise AlreadyPresent(spec.id)
        child = _Child(spec, spec.id)
        self._add(child)
        try:
            await self._start(child)
        except StartError:
            self._remove(child)
            raise
        if child.state is ChildState.STOPPED:
            if spec.restart is Restart.TEMPORARY:
                self._remove(child)
            return ChildHandle(child.id, IGNORE)
        return self._handle(child)

    async def _do_terminate(self, child_id: str) -> None:
        child = self._lookup(child_id)
        if child.state is ChildState.RESTARTING:
            child.state = (
                ChildState.STOPPED
            )  # the queued try-again finds it STOPPED and does nothing
        else:
            await self._terminate(child)
        if self._simple or child.spec.restart is Restart.TEMPORARY:
            self._remove(child)

    async def _do_crash(self, child_id: str, path: str, reason: str) -> tuple[ChildInfo, _Run]:
        child = self._by_id.get(child_id)
        if child is None:
            raise ChildNotFound(path)
        run = child.run
        if child.state is not ChildState.RUNNING or run is None:
            raise ChildNotRunning(path, child.state.value)
        info = self._info(child)
        run.request_crash(Crashed(child_id, reason))
        return info, run

    async def _do_restart_child(self, child_id: str) -> ChildHandle:
        child = self._lookup(child_id)
        if child.state is not ChildState.STOPPED:
            raise ChildRunning(child_id, child.state.value)
        await self._start(child)
        return self._handle(child)

    async def _do_delete_child(self, child_id: str) -> None:
        child = self._lookup(child_id)
        if child.state is not ChildState.STOPPED:
            raise ChildRunning(child_id, child.state.value)
        self._remove(child)

    # ---- child bookkeeping -----------------------------------------------------------------

    def _lookup(self, child_id: str) -> _Child:
        child = self._by_id.get(child_id)
        if child is None:
            raise ChildNotFound(child_id)
        return child

    def _add(self, child: _Child) -> None:
        self._by_id[child.id] = child

    def _remove(self, child: _Child) -> None:
        if self._by_id.get(child.id) is child:
            del self._by_id[child.id]

    @property
    def _order(self) -> list[_Child]:
        """The children in start order (a fresh list: safe to iterate while children change)."""
        return list(self._by_id.values())

    def _handle(self, child: _Child) -> ChildHandle:
        value = child.run.value if child.run is not None else IGNORE
        return ChildHandle(child.id, value)

    def _info(self, child: _Child) -> ChildInfo:
        value = child.run.value if child.run is not None and child.run.started else None
        return ChildInfo(
            id=child.id,
            value=value,
            state=child.state,
            type=child.spec.type,
            restart=child.spec.restart,
            restarts=child.restarts,
        )

    async def _start(self, child: _Child) -> None:
        """Start one incarnation; raise StartError, or leave it RUNNING (STOPPED if it ignored)."""
        assert self._nursery is not None
        run = _Run(child.id, child.spec.shutdown, slot=child.slot)
        if child.started_once:
            child.restarts += 1
        child.started_once = True
        child.run = run
        child.state = ChildState.STARTING
        result = await self._nursery.start(self._run_child, child, run)
        if isinstance(result, _StartFailed):
            child.run = None
            child.state = ChildState.STOPPED
            child.last_exit = result.exit
            error = StartError(child.id, str(result.exit))
            raise error from result.exit.error
        if result is IGNORE:
            child.run = None
            child.state = ChildState.STOPPED
            return
        if child.run is run and child.state is ChildState.STARTING:
            child.state = ChildState.RUNNING

    async def _run_child(
        self, child: _Child, run: _Run, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        status = _ChildStatus(run, task_status)
        del task_status  # held by `status` only until started(): frees Trio's start() nursery
        await _run_incarnation(run, child.spec.start, child.args, status)
        if run.started and not run.ignored and run.stop_requested_at is None and not self._closed:
            self._send.send_nowait(_Exited(child, run))

    async def _terminate(self, child: _Child) -> None:
        """Stop a child with its grace and wait for it; leaves it STOPPED."""
        run = child.run
        if run is not None:
            child.state = ChildState.TERMINATING
            run.request_stop()
            await run.done.wait()
            child.last_exit = run.exit
            if child.run is run:
                child.run = None
        child.state = ChildState.STOPPED

    async def _terminate_many(self, children: Iterable[_Child]) -> None:
        """Stop children one by one in the given order; forget the TEMPORARY ones (OTP)."""
        for child in children:
            if child.alive:
                await self._terminate(child)
            if child.spec.restart is Restart.TEMPORARY:
                self._remove(child)

    # ---- the control task ------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            with self._loop_scope:
                async for message in self._recv:
                    if isinstance(message, _Exited):
                        await self._on_exit(message.child, message.run)
                    elif isinstance(message, _TryAgain):
                        child = message.child
                        if (
                            child.state is ChildState.RESTARTING
                            and self._by_id.get(child.id) is child
                        ):
                            await self._restart(child)
                    else:
                        await self._serve_request(message)
                    if self._failure is not None or self._auto_shutdown:
                        assert self._nursery is not None
                        self._nursery.cancel_scope.cancel()
                        return
        finally:
            self._loop_done.set()

    async def _serve_request(self, request: _Request) -> None:
        try:
            result = await request.operation()
        except (SupervisionError, ValueError) as exc:
            request.reply.set(error=exc)
        except BaseException:
            request.reply.set(error=SupervisorStopped(f"supervisor {self.name!r} stopped"))
            raise
        else:
            request.reply.set(result)

    async def _on_exit(self, child: _Child, run: _Run) -> None:
        if child.run is not run or child.state is not ChildState.RUNNING:
            return  # stale: an earlier incarnation, or one the supervisor is stopping itself
        child.run = None
        child.state = ChildState.STOPPED
        child.last_exit = run.exit
        assert run.exit is not None
        if _should_restart(child.spec.restart, run.exit):
            await self._restart(child)
            return
        if self._simple or child.spec.restart is Restart.TEMPORARY:
            self._remove(child)
        if child.spec.significant:
            self._check_auto_shutdown()

    def _check_auto_shutdown(self) -> None:
        """OTP's ``do_auto_shutdown``: any significant exit, or the last significant one alive."""
        mode = self._options.auto_shutdown
        others_alive = any(c.spec.significant and c.alive for c in self._by_id.values())
        self._auto_shutdown = mode is AutoShutdown.ANY_SIGNIFICANT or (
            mode is AutoShutdown.ALL_SIGNIFICANT and not others_alive
        )

    async def _restart(self, child: _Child) -> None:
        """OTP's ``restart/2``: check the intensity first, then apply the strategy."""
        if not self._intensity.add_restart(trio.current_time()):
            self._failure = RestartIntensityExceeded(
                self.name, self._options.intensity, self._options.period, child.id
            )
            return
        strategy = self._options.strategy
        if strategy is Strategy.ONE_FOR_ALL:
            others = [c for c in self._order if c is not child]
            await self._terminate_many(reversed(others))
            await self._start_from(0)
        elif strategy is Strategy.REST_FOR_ONE:
            index = self._order.index(child)
            await self._terminate_many(reversed(self._order[index + 1 :]))
            await self._start_from(index)
        else:
            try:
                await self._start(child)
            except StartError:
                self._try_again(child)
            else:
                if child.state is ChildState.STOPPED and (
                    self._simple or child.spec.restart is Restart.TEMPORARY
                ):
                    self._remove(child)  # ignored on restart: dropped

    async def _start_from(self, index: int) -> None:
        """Start every non-running child from ``index`` on, in order; a failure tries again."""
        for child in self._order[index:]:
            if child.state is ChildState.RUNNING:
                continue
            try:
                await self._start(child)
            except StartError:
                self._try_again(child)
                return
            if child.state is ChildState.STOPPED and child.spec.restart is Restart.TEMPORARY:
                self._remove(child)

    def _try_again(self, child: _Child) -> None:
        child.state = ChildState.RESTARTING
        self._send.send_nowait(_TryAgain(child))

    # ---- start-up and shutdown -------------------------------------------------------------

    async def _init(self) -> None:
        """Start the initial children in order; the first failure raises StartError."""
        for child in self._order:
            await self._start(child)
            if child.state is ChildState.STOPPED and child.spec.restart is Restart.TEMPORARY:
                self._remove(child)

    async def _shutdown(self) -> None:
        """Stop the control task, fail pending requests, then stop every child.

        Children stop one at a time in reverse start order (all at once for SIMPLE_ONE_FOR_ONE).
        Must be called shielded: the wait is bounded only by the children's shutdown graces.
        """
        self._closed = True
        self._loop_scope.cancel()
        if self._loop_started:
            await self._loop_done.wait()
        self._send.close()
        while True:
            try:
                message = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(message, _Request):
                message.reply.set(error=SupervisorStopped(f"supervisor {self.name!r} stopped"))
        if self._simple:
            async with trio.open_nursery() as nursery:
                for child in self._order:
                    nursery.start_soon(self._terminate, child)
        else:
            for child in reversed(self._order):
                await self._terminate(child)

    def _start_loop(self, nursery: trio.Nursery) -> None:
        self._loop_started = True
        nursery.start_soon(self._loop)


async def _nothing() -> None:
    """A request that does nothing: its reply says the mailbox ahead of it was handled."""


def nested_supervisor(value: Any) -> Supervisor | None:
    """The supervisor a child's started value stands for, if any.

    The value itself when it is a :class:`Supervisor`, else its ``supervisor`` attribute when that
    is one (a handle on a service that runs its own supervisor). ``tree()`` and ``crash_child``
    descend through it.
    """
    if isinstance(value, Supervisor):
        return value
    inner = getattr(value, "supervisor", None)
    return inner if isinstance(inner, Supervisor) else None


@asynccontextmanager
async def open_supervisor(
    children: Iterable[ChildSpec],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 1,
    period: float = 5.0,
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
    name: str = "supervisor",
) -> AsyncIterator[Supervisor]:
    """Start a supervisor and its children; stop them all when the block exits.

    Children start synchronously, left to right, before the block is entered; if one fails, those
    already started are stopped (right to left) and :class:`StartError` is raised. On leaving the
    block, for any reason including cancellation, children are stopped right to left, each with its
    shutdown grace. If the supervisor gives up (restart intensity exceeded) the block is cancelled
    and :class:`RestartIntensityExceeded` is raised; after an auto shutdown the block is cancelled
    and exits normally. An exception raised by the block propagates as itself, not wrapped in an
    ExceptionGroup.

    Raises:
        ValueError: invalid options or children (duplicate ids, unknown strategy, negative
            intensity, significant child under ``AutoShutdown.NEVER``...), before anything starts.
    """
    options = SupervisorOptions(
        strategy=strategy,
        intensity=intensity,
        period=period,
        auto_shutdown=auto_shutdown,
        name=name,
    )
    specs = list(children)
    options.check_children(specs)
    supervisor = Supervisor(options, specs)
    start_error: StartError | None = None
    body_error: BaseException | None = None
    unwrap = False
    try:
        async with trio.open_nursery() as nursery:
            supervisor._nursery = nursery
            try:
                try:
                    await supervisor._init()
                except StartError as exc:
                    start_error = exc
                else:
                    supervisor._start_loop(nursery)
                    try:
                        yield supervisor
                    except BaseException as exc:
                        body_error = exc
                        raise
            finally:
                with trio.CancelScope(shield=True):
                    await supervisor._shutdown()
    except BaseExceptionGroup as group:
        if body_error is None or lone_exception(group, body_error) is None:
            raise
        unwrap = True
    if unwrap:
        assert body_error is not None
        raise body_error
    if start_error is not None:
        raise start_error
    if supervisor._failure is not None:
        raise supervisor._failure


async def serve_supervisor(
    children: Iterable[ChildSpec],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 1,
    period: float = 5.0,
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
    name: str = "supervisor",
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a supervisor until cancelled; ``task_status.started(supervisor)`` once its children run.

    Use it as a child of another supervisor (see :func:`supervisor_spec`). Returns normally after an
    auto shutdown; raises :class:`RestartIntensityExceeded` when it gives up.
    """
    async with open_supervisor(
        children,
        strategy=strategy,
        intensity=intensity,
        period=period,
        auto_shutdown=auto_shutdown,
        name=name,
    ) as supervisor:
        task_status.started(supervisor)
        await trio.sleep_forever()


def supervisor_spec(
    id: str,
    children: Iterable[ChildSpec],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 1,
    period: float = 5.0,
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER,
    restart: Restart = Restart.PERMANENT,
    significant: bool = False,
) -> ChildSpec:
    """A ChildSpec that runs a nested supervisor named ``id`` (type SUPERVISOR, shutdown INFINITY).

    The options are validated now. Remember OTP's gotcha: a TRANSIENT child supervisor that gives up
    exits with reason ``shutdown`` and is therefore *not* restarted by its parent.
    """
    specs = list(children)
    options = SupervisorOptions(
        strategy=strategy, intensity=intensity, period=period, auto_shutdown=auto_shutdown, name=id
    )
    options.check_children(specs)
    start = partial(
        serve_supervisor,
        specs,
        strategy=strategy,
        intensity=intensity,
        period=period,
        auto_shutdown=auto_shutdown,
        name=id,
    )
    return ChildSpec(id, start, restart=restart, type=ChildType.SUPERVISOR, significant=significant)
