"""Who a hop is, and the tokens it hands its peers (NSM's zero-trust identity).

Here so far, the token model every hop shares (see :mod:`trionsm.identity._tokens`):

* :class:`Token` (a compact JWT and its expiry) and :class:`TokenProvider`, the one interface token
  signing plugs into: ``issue(*, audience=None) -> Token``.
* :class:`JwtTokenProvider`: NSM-shaped claims (``sub``, ``aud``, ``exp``, ``iat``), expiry read
  from the :class:`~trionsm.clock.Clock` (so ``MockClock`` moves it). **Unsigned**
  (``alg: none``) until SPIFFE SVIDs and ES256 signing land here.
* :func:`decode_claims` (no verification), :func:`format_expires` / :func:`parse_expires` (Go's
  RFC3339Nano, the wire form of ``nsm-client-token-expires``) and :func:`client_metadata`, the
  per-RPC metadata pair keyed by :data:`CLIENT_TOKEN` / :data:`CLIENT_TOKEN_EXPIRES`.

Guarantees: every function is synchronous and never blocks; malformed input raises
:class:`~trionsm.errors.InvalidArgument` saying what is wrong. This package imports only
``trionsm.api``, ``trionsm.errors``, ``trionsm.clock``, the standard library and ``cryptography``
(the only package that may import it).
"""

from __future__ import annotations

from ._tokens import (
    CLIENT_TOKEN,
    CLIENT_TOKEN_EXPIRES,
    DEFAULT_TOKEN_LIFETIME,
    JwtTokenProvider,
    Token,
    TokenProvider,
    client_metadata,
    decode_claims,
    format_expires,
    parse_expires,
)

__all__ = [
    "CLIENT_TOKEN",
    "CLIENT_TOKEN_EXPIRES",
    "DEFAULT_TOKEN_LIFETIME",
    "JwtTokenProvider",
    "Token",
    "TokenProvider",
    "client_metadata",
    "decode_claims",
    "format_expires",
    "parse_expires",
]
