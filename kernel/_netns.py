"""Network namespaces named by NSM's ``inodeURL``: parse, resolve, verify, enter.

Three forms name a namespace on this host:

* ``file:///proc/<pid>/ns/net`` (also ``self``, ``thread-self`` and ``<pid>/task/<tid>``): a
  process's namespace. ``self`` and ``thread-self`` are pinned to the resolving process and thread.
* ``file:///run/netns/<name>`` or any other absolute path of a namespace file (``ip netns``,
  container runtimes' bind mounts).
* ``inode://<dev>/<ino>``: the namespace's nsfs device and inode numbers in decimal, as NSM's
  grpcfd writes them. Resolved on this host by scanning ``/run/netns``, then ``/proc/*/ns/net``,
  then ``/proc/*/task/*/ns/net`` (other processes' threads only) for a file whose
  ``st_dev``/``st_ino`` match.

A :class:`Namespace` is identified by ``(dev, ino)``; its ``path`` is only how we reach it, so
every open checks that the path still names the same namespace (a ``/proc/<pid>`` path outlives
its process, and pids are reused). We never keep a namespace file open between operations: an
open descriptor keeps a dead pod's namespace, and every interface in it, alive.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import attrs
import trio

from trionsm.errors import InvalidArgument, NotFound, PermissionDenied, TrionsmError

__all__ = [
    "Namespace",
    "check_named",
    "enter_namespace_in_this_thread",
    "find_again",
    "inode_url",
    "is_named",
    "resolve_namespace",
]

CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl(2) on an nsfs file: the namespace's CLONE_NEW* type (Linux 4.11)
_NETNS_DIRS = ("/run/netns", "/var/run/netns")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_U64 = 2**64 - 1
_FORMS = "file:///proc/<pid>/ns/net, file:///run/netns/<name> or inode://<dev>/<ino>"
_libc = ctypes.CDLL(None, use_errno=True)


@attrs.frozen
class Namespace:
    """A network namespace on this host.

    Attributes:
        url: the URL it was named by.
        path: an absolute path that opens it (checked against ``dev``/``ino`` on every open).
        dev: ``st_dev`` of the namespace file (the nsfs device).
        ino: ``st_ino`` of the namespace file (the namespace's inode).
    """

    url: str
    path: str
    dev: int
    ino: int

    @property
    def key(self) -> tuple[int, int]:
        """``(dev, ino)``: equal for every name of the same namespace."""
        return (self.dev, self.ino)

    @property
    def inode_url(self) -> str:
        """``inode://<dev>/<ino>``, NSM's host-wide name for it."""
        return f"inode://{self.dev}/{self.ino}"

    def __str__(self) -> str:
        return self.url


async def resolve_namespace(url: str | Namespace, *, hop: str | None = None) -> Namespace:
    """Resolve a namespace URL to a :class:`Namespace` that is open-able now.

    ``file://`` URLs resolve inline (a few syscalls on procfs/nsfs); ``inode://`` URLs scan procfs
    in a worker thread (no namespace is entered). Cancellable; a cancelled scan is abandoned.

    Raises:
        InvalidArgument: a malformed URL, or a file that is not a network namespace.
        NotFound: no such file, or no namespace with that inode on this host.
        PermissionDenied: the file cannot be opened.
    """
    if isinstance(url, Namespace):
        return url
    _, path, inode = _parse(url, hop)
    if inode is None:
        return _resolve_path(url, _pin_self(path), hop)
    found = await trio.to_thread.run_sync(_scan_for, inode, abandon_on_cancel=True)
    if found is None:
        raise NotFound(
            f"network namespace {url}: no namespace with that inode on this host", hop=hop
        )
    return _resolve_path(url, found, hop, expect=inode)


def inode_url(path: str) -> str:
    """``inode://<dev>/<ino>`` of the namespace file at ``path`` (or a ``file://`` URL of it).

    Raises:
        NotFound, PermissionDenied, InvalidArgument: as :func:`resolve_namespace`.
    """
    target = _parse(path, None)[1] if "://" in path else path
    return _resolve_path(path, _pin_self(target), None).inode_url


def open_namespace(namespace: Namespace, *, hop: str | None = None) -> int:
    """Open ``namespace`` read-only (``O_CLOEXEC``); the caller closes the descriptor.

    Raises:
        NotFound: the path is gone or now names another namespace (its process exited).
        PermissionDenied, InvalidArgument: as :func:`resolve_namespace`.
    """
    fd = _open_checked(namespace.url, namespace.path, hop)
    stat = os.fstat(fd)
    if (stat.st_dev, stat.st_ino) != namespace.key:
        os.close(fd)
        raise NotFound(
            f"network namespace {namespace.url} is gone: {namespace.path} now names another one",
            hop=hop,
        )
    return fd


def is_named(namespace: Namespace) -> bool:
    """Whether ``namespace.path`` still names ``namespace``: one stat(2), nothing opened.

    False once ``ip netns del`` unmounted and unlinked a ``/run/netns`` name (or a name was made
    again: another inode), once the process of a ``/proc/<pid>`` path exited (or the pid names
    another process's namespace), or when the path cannot be looked at.
    """
    try:
        stat = os.stat(namespace.path)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == namespace.key


def find_again(namespace: Namespace) -> Namespace | None:
    """``namespace`` with a path that names it now, or None once no path does (blocking).

    ``namespace`` itself while its own path still names it (one stat(2), nothing more).
    Otherwise the path went stale (the process of a ``/proc/<pid>`` path exited; a pod's name
    was moved) but the namespace may live on under another name: the host is scanned for its
    inode as for an ``inode://`` URL (``/run/netns`` first, then other processes and their
    threads, never this process's threads, which would keep it alive), and the first path found
    comes back as ``file://<path>``. None means that no path names it: it is gone for good (or
    held only by open descriptors, which no one can enter by name either). Enters nothing.

    The kernel reuses namespace inode numbers once a namespace is freed, so a namespace found
    this way long after the original went may be another one: callers act on what they find
    there only after checking it is theirs (an interface by index *and* alias).
    """
    if is_named(namespace):
        return namespace
    path = _scan_for(namespace.key)
    if path is None:
        return None
    return Namespace(url=f"file://{path}", path=path, dev=namespace.dev, ino=namespace.ino)


def check_named(namespace: Namespace, *, hop: str | None = None) -> None:
    """Raise unless ``namespace.path`` still names ``namespace`` (as :func:`is_named`).

    Raises:
        NotFound: the path is gone or names something else now; the reason names the namespace.
        PermissionDenied: the path cannot be looked at.
    """
    try:
        stat = os.stat(namespace.path)
    except OSError as exc:
        what = f"network namespace {namespace.url} is gone: cannot look at {namespace.path}"
        raise _error(exc.errno or 0, what, hop) from exc
    if (stat.st_dev, stat.st_ino) != namespace.key:
        raise NotFound(
            f"network namespace {namespace.url} is gone: {namespace.path} no longer names it",
            hop=hop,
        )


def enter_namespace_in_this_thread(namespace: Namespace, *, hop: str | None = None) -> None:
    """Move the calling OS thread into ``namespace`` (setns(2), which is per thread).

    Only for threads that belong to one namespace for their whole life (kernel/_netlink.py's
    handle threads). Never call it in the Trio thread or in Trio's cached worker threads: the next
    job to reuse such a thread would run in the wrong namespace. Blocks briefly; not cancellable.

    Raises:
        NotFound, PermissionDenied, InvalidArgument: the namespace cannot be entered; the thread
            then stays where it was.
    """
    fd = open_namespace(namespace, hop=hop)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise _error(code, f"network namespace {namespace.url}: setns failed", hop)
    finally:
        os.close(fd)
    here = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net")
    if (here.st_dev, here.st_ino) != namespace.key:  # pragma: no cover - a kernel bug
        raise RuntimeError(f"setns into {namespace.url} left the thread elsewhere")


def _parse(url: str, hop: str | None) -> tuple[str, str, tuple[int, int] | None]:
    """``(scheme, path, (dev, ino) or None)`` of a namespace URL."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidArgument(f"network namespace {url!r}: use {_FORMS}", hop=hop)
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise InvalidArgument(
                f"network namespace {url!r}: file URLs name a local path", hop=hop
            )
        if parts.query or parts.fragment or "\0" in path:
            raise InvalidArgument(f"network namespace {url!r}: malformed file URL", hop=hop)
        return "file", os.path.normpath(path), None
    if parts.scheme == "inode":
        numbers = [parts.netloc, parts.path.removeprefix("/")]
        if parts.query or parts.fragment or not all(_DECIMAL.fullmatch(n) for n in numbers):
            raise InvalidArgument(
                f"network namespace {url!r}: inode URLs are inode://<dev>/<ino>, decimals", hop=hop
            )
        dev, ino = (int(n) for n in numbers)
        if dev > _MAX_U64 or ino > _MAX_U64:
            raise InvalidArgument(f"network namespace {url!r}: numbers exceed 64 bits", hop=hop)
        return "inode", "", (dev, ino)
    raise InvalidArgument(f"network namespace {url!r}: use {_FORMS}", hop=hop)


def _pin_self(path: str) -> str:
    """Replace /proc/self and /proc/thread-self by this process's and this thread's numbers."""
    pid = os.getpid()
    if path == "/proc/thread-self" or path.startswith("/proc/thread-self/"):
        return f"/proc/{pid}/task/{threading.get_native_id()}" + path.removeprefix(
            "/proc/thread-self"
        )
    if path == "/proc/self" or path.startswith("/proc/self/"):
        return f"/proc/{pid}" + path.removeprefix("/proc/self")
    return path


def _resolve_path(
    url: str, path: str, hop: str | None, *, expect: tuple[int, int] | None = None
) -> Namespace:
    fd = _open_checked(url, path, hop)
    try:
        stat = os.fstat(fd)
    finally:
        os.close(fd)
    if expect is not None and (stat.st_dev, stat.st_ino) != expect:
        raise NotFound(f"network namespace {url}: it went away while resolving", hop=hop)
    return Namespace(url=url, path=path, dev=stat.st_dev, ino=stat.st_ino)


def _open_checked(url: str, path: str, hop: str | None) -> int:
    """Open ``path`` and check that it is a network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(exc.errno or 0, f"network namespace {url}: cannot open {path}", hop) from exc
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        raise InvalidArgument(
            f"network namespace {url}: {path} is not a namespace file (unmounted or a plain file)",
            hop=hop,
        ) from exc
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise InvalidArgument(
            f"network namespace {url}: {path} is another kind of namespace", hop=hop
        )
    return fd


def _error(code: int, what: str, hop: str | None) -> TrionsmError:
    cause = f"{what}: {os.strerror(code)}"
    if code in (errno.ENOENT, errno.ENOTDIR, errno.ESRCH):
        return NotFound(cause, hop=hop)
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDenied(cause, hop=hop)
    return InvalidArgument(cause, hop=hop)


def _scan_for(inode: tuple[int, int]) -> str | None:
    """The first namespace file on this host with ``(st_dev, st_ino) == inode`` (blocking)."""
    for path in _candidates():
        try:
            stat = os.stat(path)
        except OSError:  # raced with an exiting process, or not ours to look at
            continue
        if (stat.st_dev, stat.st_ino) == inode:
            return path
    return None


def _candidates() -> Iterator[str]:
    for directory in _NETNS_DIRS:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        yield from (os.path.join(directory, name) for name in names)
    pids = [name for name in os.listdir("/proc") if name.isdigit()]
    yield from (f"/proc/{pid}/ns/net" for pid in pids)
    # Threads may sit in other namespaces than their process (NSM's thread-self), but not ours:
    # only the executor's handle threads move, and naming a namespace by them would keep it alive.
    ours = str(os.getpid())
    for pid in (pid for pid in pids if pid != ours):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        yield from (f"/proc/{pid}/task/{tid}/ns/net" for tid in tids if tid != pid)
