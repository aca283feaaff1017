"""What the etcd client's modules share: its value types, endpoints, key ranges and errors.

The value types are ours (attrs, frozen), not the generated protobuf classes: callers of
:class:`~trionsm.transport.EtcdClient` never see ``trionsm.transport._etcd``.
"""

from __future__ import annotations

import enum
import math

import attrs
import h2.exceptions
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from trionsm.errors import InvalidArgument, TrionsmError, Unavailable, Unknown, error_for_status

from ._etcd import mvccpb
from ._url import parse_url

__all__ = [
    "KeyValue",
    "Lease",
    "WatchEvent",
    "WatchEventKind",
    "check_key",
    "check_timeout",
    "etcd_error",
    "key_value",
    "parse_endpoint",
    "prefix_end",
]

_SCHEMES = ("etcd://", "http://")


@attrs.frozen
class KeyValue:
    """One key as etcd stores it.

    Attributes:
        key: the key.
        value: its value.
        create_revision: the revision that created the key (since its last deletion).
        mod_revision: the revision of its last change.
        version: how many times it changed since it was created (1 after the creation).
        lease: the lease the key is attached to (0: none).
    """

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@attrs.frozen
class Lease:
    """A lease granted by etcd.

    Attributes:
        id: the lease's ID (etcd prints it in hex).
        ttl: the time to live etcd granted, in seconds (it may exceed the one asked for).
    """

    id: int
    ttl: int


class WatchEventKind(enum.Enum):
    """What happened to a watched key."""

    PUT = "put"
    DELETE = "delete"
    PROGRESS = "progress"


@attrs.frozen
class WatchEvent:
    """One change seen by a watch.

    Attributes:
        kind: PUT (created or changed), DELETE (deleted, or its lease expired or was revoked), or
            PROGRESS (the answer to :meth:`EtcdWatch.request_progress`: etcd's revision then;
            before etcd 3.4.24 changes up to it may still follow, see there; key and value are
            empty).
        key: the key.
        value: the new value (empty for DELETE).
        mod_revision: the revision of the change (for DELETE: the revision of the deletion; for
            PROGRESS: etcd's current revision). Changes made by one transaction share a revision.
        lease: the lease the key is attached to after a PUT (0: none).
    """

    kind: WatchEventKind
    key: bytes
    value: bytes
    mod_revision: int
    lease: int = 0

    PUT = WatchEventKind.PUT
    DELETE = WatchEventKind.DELETE
    PROGRESS = WatchEventKind.PROGRESS


def key_value(kv: mvccpb.KeyValue) -> KeyValue:
    """Our KeyValue for etcd's."""
    return KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def parse_endpoint(endpoint: str) -> tuple[str, int, str]:
    """``(host, port, hop)`` for ``host:port``, ``etcd://host:port`` or ``http://host:port``.

    The hop names etcd in errors: ``etcd@127.0.0.1:2379``.

    Raises:
        InvalidArgument: not one of those forms, or port 0.
    """
    if not isinstance(endpoint, str):
        raise InvalidArgument(f"an etcd endpoint is a string, not {type(endpoint).__name__}")
    hostport = endpoint
    for scheme in _SCHEMES:
        if endpoint.lower().startswith(scheme):
            hostport = endpoint[len(scheme) :]
            break
    form = "host:port, etcd://host:port or http://host:port"
    if "://" in hostport:
        raise InvalidArgument(f"{endpoint!r} is not an etcd endpoint: use {form} (no TLS)")
    try:
        address = parse_url(f"tcp://{hostport}")
    except InvalidArgument as exc:
        raise InvalidArgument(f"{endpoint!r} is not an etcd endpoint ({form}): {exc}") from exc
    if address.port == 0:
        raise InvalidArgument(f"{endpoint!r} is not an etcd endpoint: port 0")
    assert address.host is not None
    assert address.port is not None
    return address.host, address.port, f"etcd@{str(address).removeprefix('tcp://')}"


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a positive finite number of seconds, else InvalidArgument."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgument(f"timeout must be seconds, not {type(timeout).__name__}")
    if not (0 < timeout < math.inf):
        raise InvalidArgument(f"timeout must be positive and finite, not {timeout}")
    return float(timeout)


def check_key(key: bytes, what: str = "key") -> bytes:
    """``key`` if it is non-empty bytes, else InvalidArgument (etcd refuses empty keys)."""
    if not isinstance(key, bytes):
        raise InvalidArgument(f"an etcd {what} is bytes, not {type(key).__name__}")
    if not key:
        raise InvalidArgument(f"an etcd {what} must not be empty")
    return key


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes ``[prefix, range_end)`` every key starting with ``prefix``.

    As etcd's clientv3: the prefix with its last byte below 0xff incremented (trailing 0xff bytes
    dropped); ``b"\\0"`` (no upper bound) for an empty or all-0xff prefix.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def etcd_error(exc: BaseException, what: str, hop: str, timeout: float) -> TrionsmError:
    """The TrionsmError for an exception raised by grpclib during ``what``.

    A gRPC status becomes its class (etcd's message as the reason); a refused or broken
    connection and a call that got no answer within ``timeout`` are Unavailable.
    """
    if isinstance(exc, TrionsmError):
        return exc
    if isinstance(exc, GRPCError):
        message = exc.message or exc.status.name
        return error_for_status(exc.status.value, f"{what}: {message}", hop=hop)
    if isinstance(exc, TimeoutError) and exc.errno is None:  # grpclib's timeout
        return Unavailable(f"{what}: etcd did not answer within {timeout:g} s", hop=hop)
    if isinstance(exc, OSError):
        return Unavailable(f"{what}: cannot reach etcd: {exc}", hop=hop)
    if isinstance(exc, StreamTerminatedError | ProtocolError | h2.exceptions.ProtocolError):
        return Unavailable(f"{what}: the connection to etcd broke: {exc}", hop=hop)
    return Unknown(f"{what}: {type(exc).__name__}: {exc}", hop=hop)
