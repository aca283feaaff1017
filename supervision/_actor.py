"""Actors: one task, a bounded mailbox, ``call`` and ``cast`` (OTP's ``gen_server``).

Theory of operation. An :class:`Actor` subclass defines ``handle(message)``. :func:`serve_actor`
runs one *incarnation*: it builds a fresh actor from a factory (a clean initial state on every
restart), opens the actor's nursery for its background tasks, runs ``init()``, binds the
:class:`ActorRef` to a fresh mailbox, calls ``task_status.started(ref)`` and then handles messages
one at a time, in arrival order.

Deadline (OTP's gen_server ``timeout``). An actor may set :meth:`Actor.set_deadline`: the wait for
its next message then runs in a cancel scope with that deadline, and when it passes with no message
waiting, ``on_deadline()`` runs in the actor's task, as a message would (a message already queued
goes first). No task waits for the deadline but the actor's own, so an idle actor costs its task,
its mailbox and its state, nothing more.

An :class:`ActorRef` outlives incarnations: every incarnation of one supervised child binds the same
ref (or the one given as ``actor_spec(..., ref=ref)``), so callers keep one handle across restarts.
A call in flight when an incarnation dies, or queued in its mailbox, fails with
:class:`ActorStopped`; a cast to a dead incarnation is dropped, as in Erlang. While no incarnation
runs, ``call`` raises ActorStopped at once.

Errors. Exceptions listed in ``expected_errors`` are *error replies*: ``call`` raises them in the
caller and the actor keeps running (OTP's "errors as values"). Any other exception in ``handle``, in
``init`` or in a background task crashes the incarnation, and its supervisor applies its policy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import trio

from ._groups import lone_exception
from ._run import _claim_child_slot, cleanup_scope
from ._spec import ChildSpec, Restart, ShutdownTime
from .errors import ActorStopped, CallTimeout, MailboxFull

__all__ = ["DEFAULT_CALL_TIMEOUT", "Actor", "ActorRef", "actor_spec", "serve_actor"]

DEFAULT_CALL_TIMEOUT = 5.0
"""Seconds ``ActorRef.call`` waits by default (OTP's 5000 ms)."""

_names = itertools.count(1)


class _Pending:
    """The reply slot of one call."""

    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.value = value
            self.error = error
            self.event.set()


class _Mailbox:
    """The mailbox of one incarnation: a bounded queue with one reader (the actor's task).

    Lighter than a Trio memory channel (a list, and a parking lot only once a sender had to
    wait), since a node holds one per connection. ``put`` waits for room; ``close`` fails the
    waiting senders and lets the reader drain what is queued.
    """

    __slots__ = ("closed", "items", "pending", "reader", "senders", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[tuple[Any, _Pending | None]] = []
        self.pending: _Pending | None = None  # the call being handled right now
        self.reader: trio.lowlevel.Task | None = None  # the actor's task, waiting for a message
        self.senders: trio.lowlevel.ParkingLot | None = None
        self.closed = False

    def _has_room(self) -> bool:
        return len(self.items) < self.size or (self.reader is not None and not self.items)

    def put_nowait(self, item: tuple[Any, _Pending | None]) -> None:
        """Queue ``item`` (trio.WouldBlock when full, trio.ClosedResourceError once closed)."""
        if self.closed:
            raise trio.ClosedResourceError
        if not self._has_room():
            raise trio.WouldBlock
        self.items.append(item)
        reader, self.reader = self.reader, None
        if reader is not None:
            trio.lowlevel.reschedule(reader)

    async def put(self, item: tuple[Any, _Pending | None]) -> None:
        """Queue ``item``, waiting for room (trio.ClosedResourceError once closed)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.put_nowait(item)
            except trio.WouldBlock:
                if self.senders is None:
                    self.senders = trio.lowlevel.ParkingLot()
                await self.senders.park()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return

    async def get(self) -> tuple[Any, _Pending | None]:
        """The next item, waiting for one (trio.EndOfChannel once closed and drained)."""
        if not self.items:
            if self.closed:
                raise trio.EndOfChannel
            self.reader = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self.reader = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            if not self.items:
                raise trio.EndOfChannel  # woken by close()
        else:
            await trio.lowlevel.checkpoint()
        return self.get_nowait()

    def get_nowait(self) -> tuple[Any, _Pending | None]:
        """The next item (trio.WouldBlock when none is queued)."""
        if not self.items:
            raise trio.WouldBlock
        item = self.items.pop(0)
        if self.senders is not None:
            self.senders.unpark()
        return item

    def close(self) -> None:
        """Take no more items; wake the reader and every waiting sender."""
        self.closed = True
        reader, self.reader = self.reader, None
        if reader is not None:
            trio.lowlevel.reschedule(reader)
        if self.senders is not None:
            self.senders.unpark_all()


class ActorRef:
    """A handle to send messages to an actor, valid across its restarts.

    Create one per long-lived actor (``ActorRef("kernel")``) and pass it to every incarnation, or
    let :func:`serve_actor` make one per incarnation. Methods are safe to call from any Trio task.
    """

    __slots__ = ("_mailbox", "name")

    def __init__(self, name: str | None = None) -> None:
        self.name = name if name is not None else f"actor-{next(_names)}"
        self._mailbox: _Mailbox | None = None

    def __repr__(self) -> str:
        state = "alive" if self._mailbox is not None else "stopped"
        return f"<ActorRef {self.name} {state}>"

    @property
    def alive(self) -> bool:
        """True while an incarnation is bound and taking messages."""
        return self._mailbox is not None

    # OTP's call/2 contract: every cross-actor call carries its own timeout.
    async def call(self, message: Any, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any:  # noqa: ASYNC109
        """Send ``message`` and wait for the reply, at most ``timeout`` seconds in all.

        Waits for room when the mailbox is full (within the same timeout).

        Raises:
            CallTimeout: no reply in time (the actor may still handle the message later).
            ActorStopped: no incarnation is running, or it died before replying.
            Exception: an error reply (one of the actor's ``expected_errors``).
        """
        mailbox = self._mailbox
        if mailbox is None:
            raise ActorStopped(self.name)
        pending = _Pending()
        with trio.move_on_after(timeout) as scope:
            try:
                await mailbox.put((message, pending))
            except trio.ClosedResourceError:
                raise ActorStopped(self.name) from None
            await pending.event.wait()
        if scope.cancelled_caught:
            raise CallTimeout(self.name, timeout)
        if pending.error is not None:
            raise pending.error
        return pending.value

    def cast(self, message: Any) -> None:
        """Send ``message`` without waiting; never blocks.

        Dropped silently when no incarnation runs (as in Erlang).

        Raises:
            MailboxFull: the bounded mailbox has no room.
        """
        mailbox = self._mailbox
        if mailbox is None:
            return
        try:
            mailbox.put_nowait((message, None))
        except trio.WouldBlock:
            raise MailboxFull(self.name, mailbox.size) from None
        except trio.ClosedResourceError:
            return


class Actor:
    """Base class of actors. Subclass it and define :meth:`handle`.

    Class attributes:
        mailbox_size: bound of the mailbox (messages waiting, not counting the one being handled).
        expected_errors: exception types that ``handle`` raises as error replies instead of
        crashing.
        background_tasks: False for an actor that starts no task of its own: it then runs in one
        cancel scope, which is also its deadline's while it waits, instead of a nursery and a
        scope per wait (no :attr:`nursery`; a node holds thousands of such actors).

    Instances are made by a factory on every incarnation; keep all state on ``self``.
    """

    mailbox_size: ClassVar[int] = 64
    expected_errors: ClassVar[tuple[type[Exception], ...]] = ()
    background_tasks: ClassVar[bool] = True

    _ref: ActorRef
    _nursery: trio.Nursery
    _scope: trio.CancelScope  # the incarnation's: the nursery's, or its own without one

    @property
    def ref(self) -> ActorRef:
        """This actor's ref (to hand to others, or to cast to itself)."""
        return self._ref

    @property
    def nursery(self) -> trio.Nursery:
        """The incarnation's nursery, for background tasks (timers, watchers).

        A background task that raises crashes the incarnation. All are cancelled when it stops.
        An actor class with ``background_tasks = False`` has none (AttributeError).
        """
        return self._nursery

    async def init(self) -> None:
        """Prepare before taking messages; runs before ``started()``, so keep it short.

        Raising here is a start error.
        """

    async def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to a ``call`` (ignored for a cast)."""
        raise NotImplementedError(f"{type(self).__name__} must define handle()")

    async def on_deadline(self) -> None:
        """Runs when the deadline set by :meth:`set_deadline` passed and no message is waiting.

        It runs in the actor's task like a message (``stop()`` works here); the deadline is
        cleared before it runs, so set a new one here to wait again. The default does nothing.
        """

    def set_deadline(self, deadline: float) -> None:
        """Call :meth:`on_deadline` at ``deadline`` (``trio.current_time()`` units; inf: never).

        Moves the deadline of the actor's wait for messages: no task of its own.
        """
        self._deadline = deadline
        scope = self._waiting
        if scope is not None:
            scope.deadline = deadline

    @property
    def deadline(self) -> float:
        """When :meth:`on_deadline` runs next (inf: never)."""
        return self._deadline

    async def terminate(self, reason: BaseException | None) -> None:
        """Clean up when the incarnation ends, for any reason.

        Runs after the background tasks were cancelled, inside :func:`cleanup_scope` (so within the
        child's shutdown grace). ``reason`` is None after a normal exit, else the exception that
        ended the incarnation (``trio.Cancelled`` when its supervisor stopped it).
        """

    def stop(self) -> None:
        """End this incarnation normally once the current message (if any) is handled."""
        self._stopping = True
        if not self._handling:
            self._scope.cancel()

    _stopping = False
    _handling = False
    _deadline = math.inf
    _waiting: trio.CancelScope | None = None  # the wait for a message, while it has a deadline


async def _next(actor: Actor, mailbox: _Mailbox) -> tuple[Any, _Pending | None] | None:
    """The next message, or None when the actor's deadline passed first (queued messages win)."""
    deadline = actor._deadline
    if deadline == math.inf:
        return await mailbox.get()
    if deadline > trio.current_time() and not actor.background_tasks:
        # One scope less per idle actor: the deadline is the incarnation scope's while waiting.
        # When it passes, that scope ends; serve_actor enters a new one and comes back here.
        scope = actor._waiting = actor._scope
        scope.deadline = deadline
        try:
            return await mailbox.get()
        finally:
            actor._waiting = None
            scope.deadline = math.inf
    if deadline > trio.current_time():
        with trio.CancelScope(deadline=deadline) as scope:
            actor._waiting = scope
            try:
                return await mailbox.get()
            finally:
                actor._waiting = None
        if trio.current_time() < actor._deadline:
            return await _next(actor, mailbox)  # moved while we waited (from another task)
    try:
        return mailbox.get_nowait()
    except trio.WouldBlock:
        return None


async def _handle_loop(actor: Actor, mailbox: _Mailbox) -> None:
    """Handle messages one at a time until the actor stops itself or crashes."""
    expected = actor.expected_errors
    while True:
        try:
            item = await _next(actor, mailbox)
        except trio.EndOfChannel:
            return
        actor._handling = True
        if item is None:
            actor._deadline = math.inf
            await actor.on_deadline()
        else:
            message, pending = item
            mailbox.pending = pending
            try:
                result = await actor.handle(message)
            except expected as exc:
                if pending is not None:
                    pending.resolve(error=exc)
            else:
                if pending is not None:
                    pending.resolve(result)
                del result
            mailbox.pending = None
            # an idle actor must not keep its last message (and its reply) alive
            del item, message, pending
        actor._handling = False
        if actor._stopping:
            actor._scope.cancel()
            return


async def serve_actor(
    factory: Callable[..., Actor],
    *args: Any,
    ref: ActorRef | None = None,
    task_status: trio.TaskStatus[ActorRef] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one incarnation of an actor until it stops; ``task_status.started(ref)`` when ready.

    Without ``ref``, an actor that is a supervised child's start function reuses the ref of that
    child's earlier incarnations (one per child id); elsewhere it gets a fresh ref.

    ``factory(*args)`` builds the actor (a class, usually). Returns when the actor calls ``stop()``;
    raises what crashed it; is cancelled by its supervisor. ``terminate()`` runs in every case.
    """
    actor = factory(*args)
    if ref is None:
        claimed = _claim_child_slot()
        if claimed is None:
            ref = ActorRef(type(actor).__name__)
        else:
            child_id, slot = claimed
            ref = slot.setdefault("actor_ref", ActorRef(child_id))
    actor._ref = ref
    mailbox = _Mailbox(actor.mailbox_size)
    reason: BaseException | None = None
    try:
        try:
            if actor.background_tasks:
                async with trio.open_nursery() as nursery:
                    actor._nursery, actor._scope = nursery, nursery.cancel_scope
                    await actor.init()
                    ref._mailbox = mailbox
                    task_status.started(ref)
                    await _handle_loop(actor, mailbox)
            else:  # one cancel scope, also the deadline's while it waits (no extra frames)
                with trio.CancelScope() as actor._scope:
                    await actor.init()
                    ref._mailbox = mailbox
                    task_status.started(ref)
                    await _handle_loop(actor, mailbox)
                while actor._scope.cancelled_caught and not actor._stopping:
                    # the deadline passed while it waited: go on in a new scope
                    with trio.CancelScope() as actor._scope:
                        await _handle_loop(actor, mailbox)
        except BaseExceptionGroup as group:
            # The nursery wraps even the body's own error: unwrap a lone one for a readable reason.
            lone = lone_exception(group)
            if lone is None:
                raise
            reason = lone
        if reason is not None:
            raise reason
    except BaseException as exc:
        reason = exc
        if isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None:
            reason = exc.exceptions[0]  # stopped by its supervisor: report the Cancelled itself
        raise
    finally:
        if ref._mailbox is mailbox:
            ref._mailbox = None
        _fail_pending(ref.name, mailbox, reason)
        with cleanup_scope():
            await actor.terminate(reason)


def _fail_pending(name: str, mailbox: _Mailbox, reason: BaseException | None) -> None:
    """Answer ActorStopped to the call being handled and to every call still queued."""
    if mailbox.pending is not None:
        mailbox.pending.resolve(error=ActorStopped(name, reason))
    mailbox.close()
    for _message, pending in mailbox.items:
        if pending is not None:
            pending.resolve(error=ActorStopped(name, reason))
    mailbox.items.clear()


def actor_spec(
    id: str,
    factory: Callable[..., Actor],
    *args: Any,
    ref: ActorRef | None = None,
    restart: Restart = Restart.PERMANENT,
    shutdown: ShutdownTime | None = None,
    significant: bool = False,
) -> ChildSpec:
    """A ChildSpec running ``factory(*args)`` as an actor.

    Every incarnation of the child gets the same ActorRef (named after the child's id), so a ref
    taken from ``start_child`` or ``which_children`` stays valid across restarts; pass ``ref`` to
    create it yourself beforehand. Under SIMPLE_ONE_FOR_ONE the arguments given to
    ``start_child(*extra)`` are appended to ``args``, and each child gets its own ref.
    """
    start = partial(serve_actor, factory, *args, ref=ref)
    return ChildSpec(id, start, restart=restart, shutdown=shutdown, significant=significant)
