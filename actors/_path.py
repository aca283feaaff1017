"""NSM's path and token model as pure functions: updatepath, the way back, trimpath, updatetoken,
and the expiry arithmetic of refresh and timeout.

Theory of operation (NSM sdk ``updatepath``, ``updatetoken``, ``trimpath``, ``refresh``,
``timeout``). A connection's :class:`~trionsm.api.connection.Path` holds one
:class:`~trionsm.api.connection.PathSegment` per hop (NSC, nsmgr, forwarder, ..., NSE);
``Connection.id`` is always the id of the *current* hop's segment and ``path.index`` points at it.

* On the way in, every hop (server side, and again the same hop's client side) runs
  :func:`update_path` with its own name. A client inside the same process as its server keeps the
  server's segment (same name, rule 2); the next server appends or takes over the next segment.
  A local connection ends as ``[NSC, nsmgr, forwarder, NSE]``, a remote one as
  ``[NSC, nsmgr-1, forwarder-1, nsmgr-2, forwarder-2, NSE]``. On a refresh or heal the same hops
  find their own segments again and keep their ids.
* A server then runs :func:`update_token`: the caller's per-RPC token goes into the previous
  segment, a token it mints goes into its own. In the final path segment *i* holds the token hop
  *i* minted for hop *i + 1*; the NSE keeps its own.
* The last hop (the NSE) truncates the path after itself (:func:`trim_path`), so a reselected,
  shorter path sheds stale tail segments.
* On the way back every hop hands its caller the reply as the caller sees it
  (:func:`restore_hop` with the index and id the request arrived with).
* The client refreshes after :func:`refresh_after` seconds; a server closes the connection at
  :func:`server_deadline` when its caller stops refreshing.

Messages are shared read-only inside a process: every function returns a new
:class:`~trionsm.api.connection.Connection` with a new ``Path`` and a new segment list; segments it
changes are new objects, unchanged segments are shared with the argument. Nothing here blocks or
does I/O; :func:`refresh_after` reads Trio's clock.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import uuid
from collections.abc import Callable

from trionsm.api.connection import Connection, Path, PathSegment
from trionsm.clock import Clock
from trionsm.errors import InvalidArgument
from trionsm.identity import TokenProvider, parse_expires

__all__ = [
    "min_expires",
    "refresh_after",
    "restore_hop",
    "server_deadline",
    "trim_path",
    "update_path",
    "update_token",
]


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _segments(path: Path | None) -> list[PathSegment]:
    return path.path_segments if path is not None else []


def _with_path(
    connection: Connection, segments: list[PathSegment], index: int, *, id: str | None = None
) -> Connection:
    """A copy of ``connection`` with a new Path (and a new id when given)."""
    path = Path(index=index, path_segments=segments)
    if id is None:
        return dataclasses.replace(connection, path=path)
    return dataclasses.replace(connection, id=id, path=path)


def update_path(
    connection: Connection, name: str, *, new_id: Callable[[], str] = _new_uuid
) -> Connection:
    """NSM's ``updatepath``: find or make hop ``name``'s segment and make it the current one.

    The rules, in order (sdk ``updatepath/common.go``):

    1. No segments: segment 0 is ``{name, id}`` with the connection's id, or a new one if empty.
    2. The segment at ``path.index`` has my name (a refresh, or my own server's segment when I am
       its client): adopt its id.
    3. Otherwise I am the next hop, at ``index + 1``. The current segment's id must be the
       connection's id. A segment already at ``index + 1`` with my name keeps its id (a refresh or
       heal through the same hop); one with another name is replaced by a fresh ``{name, new id}``
       (a different hop took that place: unlike NSM, its old token, expiry and metrics are not
       carried over); with no segment there, ``{name, new id}`` is appended.

    Segments after the current one are kept (trimmed by the last hop: :func:`trim_path`).

    Args:
        connection: the connection as it arrived (not modified).
        name: this hop's name (its path segment name).
        new_id: makes a fresh segment id (default: a random UUID4 string).

    Returns:
        A new connection whose ``id`` is this hop's segment id and whose ``path.index`` points at
        that segment.

    Raises:
        InvalidArgument: naming hop ``name``: an empty name, ``path.index`` past the last segment,
            or a connection id that is not the current segment's id.
    """
    if not name:
        raise InvalidArgument("a hop needs a name for its path segment")
    segments = list(_segments(connection.path))
    if not segments:
        segment = PathSegment(name=name, id=connection.id or new_id())
        return _with_path(connection, [segment], 0, id=segment.id)
    index = connection.path.index if connection.path is not None else 0
    if index < len(segments) and segments[index].name == name:
        return _with_path(connection, segments, index, id=segments[index].id)
    if index >= len(segments):
        raise InvalidArgument(
            f"path index {index} is past the last of {len(segments)} path segments", hop=name
        )
    current = segments[index]
    if current.id != connection.id:
        raise InvalidArgument(
            f"connection id {connection.id!r} is not the id {current.id!r} of path segment "
            f"{index} ({current.name!r})",
            hop=name,
        )
    following = index + 1
    if following == len(segments):
        segments.append(PathSegment(name=name, id=new_id()))
    elif segments[following].name != name:
        segments[following] = PathSegment(name=name, id=new_id())
    return _with_path(connection, segments, following, id=segments[following].id)


def restore_hop(response: Connection, index: int, id: str | None = None) -> Connection:
    """The way back: ``response`` as the hop at ``index`` sees it.

    A server calls it on the reply from downstream with the ``path.index`` its request arrived
    with (0 when the caller sent no segments) before answering, as NSM's ``updatepath`` does, so
    every hop gets its reply at its own segment.

    Args:
        response: the reply from downstream (not modified).
        index: the segment to make current again.
        id: the connection id to restore; by default that segment's id in ``response``.

    Returns:
        A new connection with ``path.index = index`` and ``id`` set.

    Raises:
        InvalidArgument: the reply's path has no segment ``index``.
    """
    segments = list(_segments(response.path))
    if not 0 <= index < len(segments):
        raise InvalidArgument(
            f"the reply's path has {len(segments)} segments: no segment {index} to restore"
        )
    return _with_path(response, segments, index, id=segments[index].id if id is None else id)


def trim_path(connection: Connection, index: int) -> Connection:
    """NSM's ``trimpath``: drop every segment after ``index`` (the last hop's own segment).

    Returns:
        A new connection whose path is ``path_segments[:index + 1]`` (every segment when there
        are no more), ``path.index`` and ``id`` untouched.

    Raises:
        InvalidArgument: a negative index.
    """
    if index < 0:
        raise InvalidArgument(f"cannot trim a path at negative index {index}")
    if connection.path is None:
        return dataclasses.replace(connection)
    return _with_path(connection, connection.path.path_segments[: index + 1], connection.path.index)


def update_token(
    connection: Connection,
    index: int,
    *,
    caller_token: str | None,
    caller_expires: str | None,
    provider: TokenProvider,
    audience: str | None = None,
) -> Connection:
    """NSM's server ``updatetoken``: the caller's token into ``index - 1``, ours into ``index``.

    When ``index > 0`` and the caller sent a token, that token and its expiry (the per-RPC
    metadata ``nsm-client-token`` / ``nsm-client-token-expires``) are written into the previous
    segment; then a token minted by ``provider`` for ``audience`` goes into segment ``index``. A
    client minting its own token (the NSC, index 0) calls it with ``caller_token=None``.

    Args:
        connection: the connection after :func:`update_path` (not modified).
        index: this hop's segment (normally ``connection.path.index``).
        caller_token: the caller's token, None if it sent none.
        caller_expires: its expiry as sent (RFC3339Nano).
        provider: mints this hop's token.
        audience: the peer's identity for the minted token (NSM: the caller's SPIFFE ID).

    Returns:
        A new connection with the two segments replaced.

    Raises:
        InvalidArgument: ``index`` is not a segment; or, naming this hop, a caller token came
            with a missing or malformed expiry.
    """
    segments = list(_segments(connection.path))
    if not 0 <= index < len(segments):
        raise InvalidArgument(f"path index {index} is not one of {len(segments)} path segments")
    hop = segments[index].name or None
    if index > 0 and caller_token is not None:
        if caller_expires is None:
            raise InvalidArgument("nsm-client-token came without nsm-client-token-expires", hop=hop)
        try:
            expires = parse_expires(caller_expires)
        except InvalidArgument as exc:
            raise InvalidArgument(exc.reason, hop=hop) from exc
        segments[index - 1] = dataclasses.replace(
            segments[index - 1], token=caller_token, expires=expires
        )
    token = provider.issue(audience=audience)
    segments[index] = dataclasses.replace(segments[index], token=token.value, expires=token.expires)
    path_index = connection.path.index if connection.path is not None else 0
    return _with_path(connection, segments, path_index)


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def min_expires(path: Path | None) -> datetime.datetime | None:
    """The earliest ``expires`` over all segments; None when no segment has one.

    A naive datetime is taken as UTC (as the Clock does).
    """
    stamps = [_aware(s.expires) for s in _segments(path) if s.expires is not None]
    return min(stamps, default=None)


def refresh_after(path: Path | None, index: int, *, clock: Clock) -> float:
    """Seconds from now until the hop at ``index`` should refresh (NSM's client ``refresh``).

    ``scale * min over all segments of (expires - now)``, with ``scale = 1/3`` for a path of at
    most one segment and ``0.2 + 0.2 * index / len(path)`` otherwise (outer hops refresh a little
    sooner: the NSC at 20 %, about every 2 min with 10 min tokens). Reads Trio's clock.

    Returns:
        The delay in seconds; ``0.0`` when a segment already expired; ``inf`` when no segment
        carries an expiry (nothing forces a refresh).

    Raises:
        InvalidArgument: ``index`` is not a segment of a non-empty path.
    """
    segments = _segments(path)
    if segments and not 0 <= index < len(segments):
        raise InvalidArgument(f"path index {index} is not one of {len(segments)} path segments")
    earliest = min_expires(path)
    if earliest is None:
        return math.inf
    remaining = clock.remaining(earliest)
    if remaining <= 0:
        return 0.0
    scale = 1 / 3 if len(segments) <= 1 else 0.2 + 0.2 * index / len(segments)
    return remaining * scale


def server_deadline(
    path: Path | None, index: int, request_timeout: float, *, clock: Clock
) -> float:
    """The Trio time at which the server at ``index`` closes a connection nobody refreshed.

    NSM's server ``timeout``: ``path[index - 1].expires - request_timeout``, so the Close still
    fits in before the caller's token runs out.

    Returns:
        A Trio deadline (``trio.current_time()`` seconds); ``inf`` when there is no previous
        segment (index 0) or it carries no expiry.

    Raises:
        InvalidArgument: ``index`` is not a segment of the path.
    """
    segments = _segments(path)
    if not 0 <= index < len(segments):
        raise InvalidArgument(f"path index {index} is not one of {len(segments)} path segments")
    if index == 0:
        return math.inf
    expires = segments[index - 1].expires
    if expires is None:
        return math.inf
    return clock.deadline(expires) - request_timeout
