"""Errors of the supervision runtime.

Two families:

* :class:`Shutdown` and its subclass :class:`RestartIntensityExceeded` are *exit reasons*. A
  child that raises :class:`Shutdown` ends with OTP's ``shutdown`` reason, which is not abnormal:
  a TRANSIENT child that ends this way is not restarted. A supervisor that gives up raises
  :class:`RestartIntensityExceeded` (unwrapped, never inside an ExceptionGroup).
* :class:`Crashed` is the exit reason of a child crashed on request
  (:meth:`Supervisor.crash_child`, fault injection): abnormal, so its supervisor applies its
  restart policy as for any crash.
* :class:`SupervisionError` and its subclasses are raised to the *caller* of a supervisor or
  actor API when the request cannot be carried out (the caller's fault or a dead peer); they
  never crash the supervisor itself.

Invalid specifications and options are plain :class:`ValueError` naming the field, raised before
anything starts.
"""

from __future__ import annotations

__all__ = [
    "ActorStopped",
    "AlreadyPresent",
    "AlreadyStarted",
    "CallTimeout",
    "ChildNotFound",
    "ChildNotRunning",
    "ChildRunning",
    "Crashed",
    "MailboxFull",
    "RestartIntensityExceeded",
    "Shutdown",
    "SimpleOneForOneError",
    "StartError",
    "SupervisionError",
    "SupervisorStopped",
]


class Shutdown(Exception):
    """Raise from a child to exit with reason ``shutdown`` (not abnormal).

    Attributes:
        reason: free text kept for logs and status pages.
    """

    def __init__(self, reason: str = "shutdown") -> None:
        super().__init__(reason)
        self.reason = reason


class Crashed(Exception):
    """The exit reason of a child crashed on request (fault injection): an abnormal exit.

    Attributes:
        child_id: the crashed child; reason: the text given with the request.
    """

    def __init__(self, child_id: str, reason: str = "crashed on request") -> None:
        super().__init__(f"child {child_id!r}: {reason}")
        self.child_id = child_id
        self.reason = reason


class RestartIntensityExceeded(Shutdown):
    """A supervisor restarted more than ``intensity`` times within ``period`` seconds and gave up.

    Raised out of ``open_supervisor`` / ``serve_supervisor`` after every child was stopped. Because
    it is a :class:`Shutdown`, a parent supervisor restarts the dead supervisor only if it is
    PERMANENT: a TRANSIENT child supervisor that gives up stays down (OTP's documented gotcha).
    """

    def __init__(self, supervisor: str, intensity: int, period: float, child_id: str) -> None:
        super().__init__(
            f"supervisor {supervisor!r} reached max restart intensity "
            f"({intensity} restarts in {period:g} s) while restarting child {child_id!r}"
        )
        self.supervisor = supervisor
        self.intensity = intensity
        self.period = period
        self.child_id = child_id


class SupervisionError(Exception):
    """Base class of the errors returned to callers of the supervision API."""


class StartError(SupervisionError):
    """A child failed to start: it raised, or returned, before calling ``task_status.started()``.

    The original exception is the ``__cause__``. Raised by ``start_child``/``restart_child``, and
    out of ``open_supervisor`` when a child of the initial list fails (the children already started
    are stopped first, as in OTP).
    """

    def __init__(self, child_id: str, reason: str) -> None:
        super().__init__(f"child {child_id!r} failed to start: {reason}")
        self.child_id = child_id
        self.reason = reason


class AlreadyStarted(SupervisionError):
    """``start_child`` got the id of a running child; ``value`` is what that child started with."""

    def __init__(self, child_id: str, value: object) -> None:
        super().__init__(f"child {child_id!r} is already started")
        self.child_id = child_id
        self.value = value


class AlreadyPresent(SupervisionError):
    """``start_child`` was given the id of a child spec that exists but is not running."""

    def __init__(self, child_id: str) -> None:
        super().__init__(f"child {child_id!r} is already present (not running); use restart_child")
        self.child_id = child_id


class ChildNotFound(SupervisionError, LookupError):
    """No child with that id (or handle) under this supervisor."""

    def __init__(self, child_id: object) -> None:
        super().__init__(f"no child {child_id!r}")
        self.child_id = child_id


class ChildNotRunning(SupervisionError):
    """``crash_child`` on a child that is not running (starting, restarting or stopped)."""

    def __init__(self, child_id: str, state: str) -> None:
        super().__init__(f"child {child_id!r} is {state}, not running")
        self.child_id = child_id
        self.state = state


class ChildRunning(SupervisionError):
    """``restart_child``/``delete_child`` on a child that is running or restarting."""

    def __init__(self, child_id: str, state: str) -> None:
        super().__init__(f"child {child_id!r} is {state}")
        self.child_id = child_id
        self.state = state


class SimpleOneForOneError(SupervisionError):
    """An operation OTP forbids on a SIMPLE_ONE_FOR_ONE supervisor (``restart_child``,
    ``delete_child``)."""


class SupervisorStopped(SupervisionError):
    """The supervisor has stopped (or is stopping) and takes no more requests."""


class ActorStopped(SupervisionError):
    """The actor is not running: it was never started, has exited, or crashed handling this message.

    ``reason`` is the exception that ended the incarnation, when known.
    """

    def __init__(self, name: str, reason: BaseException | None = None) -> None:
        detail = f": {type(reason).__name__}: {reason}" if reason is not None else ""
        super().__init__(f"actor {name!r} stopped{detail}")
        self.name = name
        self.reason = reason


class CallTimeout(SupervisionError, TimeoutError):
    """No reply to ``call`` within its timeout. The message may still be handled later."""

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(f"call to actor {name!r} got no reply within {timeout:g} s")
        self.name = name
        self.timeout = timeout


class MailboxFull(SupervisionError):
    """``cast`` found the actor's bounded mailbox full. Casts never block; the caller decides."""

    def __init__(self, name: str, size: int) -> None:
        super().__init__(f"mailbox of actor {name!r} is full ({size} messages)")
        self.name = name
        self.size = size
