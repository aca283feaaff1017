"""CurveZMQ keys and the ZAP handler that turns a client's public key into its identity.

With :class:`CurveKeys` a ZeroMQ server encrypts every connection (``curve_server``) and a client
must know the server's public key (``curve_serverkey``): a peer without it cannot complete the
handshake, so it cannot send a single call. The server also binds a ZAP handler (RFC 27) on
``inproc://zeromq.zap.01`` in its own ``zmq.Context``: libzmq asks it about every handshake, and
:func:`zap_reply` answers from ``CurveKeys.clients``:

* ``clients`` is None: any client that knows the server key is let in, identified as
  ``curve:<its Z85 public key>``;
* otherwise only the listed public keys are let in, identified by the string they map to (a SPIFFE
  ID such as ``spiffe://example.org/ns/default/sa/nsc``). Others fail the handshake; their calls
  fail with :class:`~trionsm.errors.Unauthenticated`.

The identity reaches handlers as ``CallContext.peer.identity`` (libzmq's ``User-Id`` message
property, which only the ZAP handler can set).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import attrs
import zmq
from zmq.utils import z85

from ._zmq_socket import TrioSocket

__all__ = ["ZAP_ENDPOINT", "CurveKeys", "serve_zap", "zap_reply"]

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_DOMAIN: Final = b"trionsm"
_Z85_KEY = 40


def _key(value: bytes | str | None) -> bytes | None:
    if value is None:
        return None
    raw = value.encode("ascii") if isinstance(value, str) else value
    if not isinstance(raw, bytes) or len(raw) != _Z85_KEY:
        raise ValueError(f"a CurveZMQ key is {_Z85_KEY} Z85 characters, got {value!r}")
    try:
        z85.decode(raw)
    except Exception as exc:
        raise ValueError(f"not a Z85 CurveZMQ key: {value!r}") from exc
    return raw


def _required_key(value: bytes | str) -> bytes:
    key = _key(value)
    assert key is not None
    return key


def _clients(value: Mapping[bytes | str, str] | None) -> Mapping[bytes, str] | None:
    if value is None:
        return None
    clients = {}
    for key, identity in value.items():
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"clients: the identity of {key!r} must be a non-empty str")
        clients[_required_key(key)] = identity
    return MappingProxyType(clients)


@attrs.frozen
class CurveKeys:
    """CurveZMQ keys of one side, Z85-encoded (40 characters; ``str`` is accepted).

    Attributes:
        public: this side's public key.
        secret: this side's secret key (never shown in ``repr``).
        server_public: client only: the server's public key (required to dial).
        clients: server only: allowed client public keys and the identity each maps to; None lets
            in any client that knows the server key.
    """

    public: bytes = attrs.field(converter=_required_key)
    secret: bytes = attrs.field(converter=_required_key, repr=False)
    server_public: bytes | None = attrs.field(default=None, converter=_key)
    clients: Mapping[bytes, str] | None = attrs.field(default=None, converter=_clients)

    @classmethod
    def generate(
        cls,
        *,
        server_public: bytes | str | None = None,
        clients: Mapping[bytes | str, str] | None = None,
    ) -> CurveKeys:
        """A fresh key pair (``zmq.curve_keypair``) with the given server key or client list."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret, server_public, clients)

    def dialing(self, server: CurveKeys | bytes | str) -> CurveKeys:
        """These keys set up to dial ``server`` (its keys or its public key)."""
        public = server.public if isinstance(server, CurveKeys) else server
        return attrs.evolve(self, server_public=public)

    def identify(self, client_public: bytes) -> str | None:
        """The identity of a client's Z85 public key, or None if it may not connect."""
        if self.clients is None:
            return f"curve:{client_public.decode('ascii')}"
        return self.clients.get(client_public)


def check_curve(curve: object, *, server: bool) -> CurveKeys | None:
    """``curve`` as given to ``serve``/``open_client``: None or suitable :class:`CurveKeys`.

    Raises:
        TypeError: not None and not CurveKeys.
        ValueError: a client's keys without ``server_public``.
    """
    if curve is None:
        return None
    if not isinstance(curve, CurveKeys):
        raise TypeError(f"curve must be CurveKeys or None, not {type(curve).__name__}")
    if not server and curve.server_public is None:
        raise ValueError("a client's CurveKeys need server_public (see CurveKeys.dialing)")
    return curve


def zap_reply(frames: list[bytes], keys: CurveKeys) -> list[bytes]:
    """The ZAP (RFC 27) reply to one request: 200 with the identity as user id, or 400.

    Request frames: version, request id, domain, address, routing id, mechanism, credentials.
    """
    if len(frames) < 6 or frames[0] != b"1.0":
        request_id = frames[1] if len(frames) > 1 else b""
        return [b"1.0", request_id, b"500", b"malformed ZAP request", b"", b""]
    request_id, mechanism, credentials = frames[1], frames[5], frames[6:]
    if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
        return [b"1.0", request_id, b"400", b"CurveZMQ required", b"", b""]
    identity = keys.identify(z85.encode(credentials[0]))
    if identity is None:
        return [b"1.0", request_id, b"400", b"unknown CurveZMQ client key", b"", b""]
    return [b"1.0", request_id, b"200", b"OK", identity.encode(), b""]


async def serve_zap(socket: TrioSocket, keys: CurveKeys) -> None:
    """Answer ZAP requests on ``socket`` (a REP bound on :data:`ZAP_ENDPOINT`) until cancelled.

    The only task that touches ``socket``. Blocks in receive; a cancelled reply is dropped, and
    libzmq then fails that handshake.
    """
    while True:
        request = await socket.recv_multipart()
        await socket.send_multipart(zap_reply(request, keys))


def configure_server(socket: zmq.Socket[bytes], keys: CurveKeys) -> None:
    """Make ``socket`` a CurveZMQ server that consults the ZAP handler."""
    socket.curve_server = True
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.zap_domain = ZAP_DOMAIN


def configure_client(socket: zmq.Socket[bytes], keys: CurveKeys) -> None:
    """Make ``socket`` a CurveZMQ client of ``keys.server_public``."""
    assert keys.server_public is not None
    socket.curve_serverkey = keys.server_public
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret
