"""The ZeroMQ carrier: ROUTER servers and DEALER clients speaking msgpack envelopes.

``serve`` and ``open_client`` reach this module for ``zmq+tcp://host:port`` and
``zmq+ipc:///path`` URLs. It is split by concept:

* ``_zmq_envelope``: the wire format (pure): one msgpack map per ZeroMQ message, protobuf bytes
  inside, versioned; call, data, end, error, cancel, credit, bye and ping envelopes.
* ``_zmq_socket``: pyzmq driven natively from Trio (``zmq.FD`` readiness, one owner task per
  socket, watchers that wake the owner).
* ``_zmq_setup``: socket options (ZMTP heartbeats, ``ZMQ_MAXMSGSIZE``, ``ZMQ_IMMEDIATE``...),
  binding, ipc socket files, the client context shared per Trio run.
* ``_zmq_server``: :func:`serve_zmq`, a ROUTER and its owner, the liveness sweep and the ``bye``
  on shutdown; ``_zmq_server_call``: the task that runs one call.
* ``_zmq_client``: :func:`open_zmq_channel`, a DEALER and its owner, calls multiplexed by id,
  connection state from the socket monitor; ``_zmq_call``: one call as its caller sees it.
* ``_zmq_curve``: :class:`CurveKeys` (CurveZMQ) and the ZAP handler that maps client keys to
  identities (``CallContext.peer.identity``).

Guarantees (the conformance suite checks them as for every carrier): errors cross as the same
class with hop, service and reason; handlers run under the caller's deadline; leaving a stream
cancels its handler; a server that stops, dies or freezes is ``Unavailable`` to its clients within
~2 s (at once when it stops cleanly); a call while no server runs is ``Unavailable`` within one
reconnect interval, and calls go through again once a server is back on the URL; bad envelopes
get error replies and never stop the server; messages are at most ``max_message_bytes`` (4 MiB by
default, as on every carrier) and envelopes at most ``frame_cap`` of it.
"""

from __future__ import annotations

from ._zmq_client import CONNECT_TIMEOUT, ZmqChannel, open_zmq_channel
from ._zmq_curve import CurveKeys
from ._zmq_envelope import MAX_FRAME, VERSION, WINDOW
from ._zmq_server import PING_INTERVAL, ZmqServer, ZmqServerStats, serve_zmq

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_FRAME",
    "PING_INTERVAL",
    "VERSION",
    "WINDOW",
    "CurveKeys",
    "ZmqChannel",
    "ZmqServer",
    "ZmqServerStats",
    "open_zmq_channel",
    "serve_zmq",
]
