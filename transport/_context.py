"""What travels with every call, on every carrier: deadline, metadata and the peer.

A :class:`CallContext` is what a server-side handler receives next to the request. Its deadline is
in ``trio.current_time()`` seconds (so ``MockClock`` drives it), converted to a relative timeout on
the wire. Metadata is NSM's: the per-RPC token pair (``nsm-client-token``,
``nsm-client-token-expires``) and the registry's JSON ``path`` header. The peer's identity is the
SPIFFE ID from its certificate's URI SAN when the carrier authenticated it (TLS for gRPC, CurveZMQ
for ZeroMQ), else None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import attrs
import trio

__all__ = [
    "CLIENT_TOKEN",
    "CLIENT_TOKEN_EXPIRES",
    "REGISTRY_PATH",
    "CallContext",
    "Metadata",
    "Peer",
]

CLIENT_TOKEN: Final = "nsm-client-token"
CLIENT_TOKEN_EXPIRES: Final = "nsm-client-token-expires"
REGISTRY_PATH: Final = "path"

Metadata = Mapping[str, str]


def _freeze(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    if metadata is None:
        return MappingProxyType({})
    frozen = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {value!r}")
        frozen[key.lower()] = value  # gRPC metadata keys are case-insensitive (HTTP/2 headers)
    return MappingProxyType(frozen)


@attrs.frozen
class Peer:
    """Who is at the other end.

    Attributes:
        address: where it connected from, as a URL-ish string (``tcp://10.0.0.1:41234``,
            ``unix:///run/nsm.sock``, ``inproc://client``).
        identity: its SPIFFE ID when the carrier authenticated it, else None.
    """

    address: str
    identity: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.identity is not None


@attrs.frozen(eq=False)
class CallContext:
    """The deadline, metadata and peer of one call.

    Attributes:
        method: the gRPC path (``/networkservice.NetworkService/Request``).
        deadline: absolute, in ``trio.current_time()`` seconds; ``math.inf`` for none.
        metadata: read-only, keys lower-cased.
        peer: the remote end (on a server) or the server (on a client).
    """

    method: str = ""
    deadline: float = math.inf
    metadata: Mapping[str, str] = attrs.field(default=None, converter=_freeze)
    peer: Peer | None = None

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative; ``inf`` without a deadline)."""
        return self.deadline - trio.current_time()

    @property
    def client_token(self) -> str | None:
        """NSM's per-RPC token (a JWT), if the caller sent one."""
        return self.metadata.get(CLIENT_TOKEN)

    @property
    def client_token_expires(self) -> str | None:
        """The token's expiry as sent (RFC 3339 with nanoseconds)."""
        return self.metadata.get(CLIENT_TOKEN_EXPIRES)

    @property
    def registry_path(self) -> str | None:
        """The registry's private path header (JSON), if present."""
        return self.metadata.get(REGISTRY_PATH)
