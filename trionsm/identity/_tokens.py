"""NSM's per-hop tokens: the one provider interface, a JWT-shaped provider, expiry strings.

Every NSM hop mints a token for its peer (a JWT: ``sub`` = the hop's own SPIFFE ID, ``aud`` = the
peer's, ``exp``) and sends it with each call as the metadata pair ``nsm-client-token`` /
``nsm-client-token-expires`` (the expiry as Go's RFC3339Nano). The server copies that pair into the
previous path segment and mints its own token into its own segment (``update_token`` in
:mod:`trionsm.actors._path`).

:class:`TokenProvider` is the one interface signing plugs into. :class:`JwtTokenProvider` makes
JWT-*shaped* tokens that are **unsigned** (``alg: none``, empty signature part) until the identity
work signs them with the hop's SVID key (ES256, as NSM's ``spiffejwt``). Anything that decodes
claims (:func:`decode_claims`) therefore proves nothing about who made the token.

Expiry is read from a :class:`~trionsm.clock.Clock`, so under ``MockClock`` tokens expire with Trio
time. ``exp`` is whole seconds and a :class:`Token`'s ``expires`` is exactly ``exp``: the metadata
never advertises a token as valid past its own claim.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
from typing import Any, Final, Protocol

import attrs

from trionsm.clock import Clock, current_clock
from trionsm.errors import InvalidArgument

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

# The metadata keys of NSM's per-RPC credentials (sdk pkg/tools/token). trionsm.transport has the
# same two constants; identity may not import transport, and a test keeps the pairs equal.
CLIENT_TOKEN: Final = "nsm-client-token"
CLIENT_TOKEN_EXPIRES: Final = "nsm-client-token-expires"

DEFAULT_TOKEN_LIFETIME: Final = 600.0
"""NSM's ``NSM_MAX_TOKEN_LIFETIME`` default: 10 minutes."""

_UTC = datetime.UTC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_SECOND = datetime.timedelta(seconds=1)
_UNSIGNED_HEADER: Final = {"alg": "none", "typ": "JWT"}


def _secret_repr(value: str) -> str:
    return f"<{len(value)} chars>"  # a signed token is a bearer credential: keep it out of logs


@attrs.frozen
class Token:
    """A token minted for one peer, and when it stops being valid.

    Attributes:
        value: the compact JWT (``header.payload.signature``); hidden from ``repr``.
        expires: an aware UTC datetime, equal to the token's ``exp`` claim.
    """

    value: str = attrs.field(repr=_secret_repr)
    expires: datetime.datetime


class TokenProvider(Protocol):
    """Mints this hop's tokens. The one interface token signing plugs into."""

    def issue(self, *, audience: str | None = None) -> Token:
        """A fresh token for the peer ``audience`` (its SPIFFE ID; None when unknown).

        Never blocks; may read the Trio clock, so call it inside a Trio run.
        """
        ...


@attrs.frozen
class JwtTokenProvider:
    """Unsigned JWT-shaped tokens for ``subject``, valid ``lifetime`` seconds from issue.

    The header is ``{"alg":"none","typ":"JWT"}`` and the signature part is empty: **nothing is
    signed yet**; the identity work will replace this with ES256 over the hop's SVID key. The
    payload carries NSM's claims: ``sub``, ``aud`` (a list: ``[audience]``, or ``[]`` when the peer
    is unknown), ``exp`` and ``iat`` (whole seconds since the epoch, floored).

    Args:
        subject: this hop's identity (its SPIFFE ID, e.g. ``spiffe://example.org/nsmgr``).
        lifetime: seconds a token stays valid (NSM's default: 10 minutes).
        clock: where "now" comes from; by default the run's :func:`~trionsm.clock.current_clock`
            at each issue.

    Raises:
        InvalidArgument: an empty subject or a lifetime that is not positive.
    """

    subject: str
    lifetime: float = attrs.field(default=DEFAULT_TOKEN_LIFETIME, kw_only=True)
    clock: Clock | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not self.subject:
            raise InvalidArgument("a token needs a subject (the hop's identity)")
        if not (math.isfinite(self.lifetime) and self.lifetime > 0):
            raise InvalidArgument(f"a token lifetime must be positive seconds: {self.lifetime!r}")

    def issue(self, *, audience: str | None = None) -> Token:
        """A token for ``audience`` expiring ``lifetime`` seconds from the clock's now (floored)."""
        clock = self.clock if self.clock is not None else current_clock()
        now = clock.timestamp()
        expires = (now + datetime.timedelta(seconds=self.lifetime)).replace(microsecond=0)
        claims: dict[str, Any] = {
            "sub": self.subject,
            "aud": [] if audience is None else [audience],
            "exp": _whole_seconds(expires),
            "iat": _whole_seconds(now),
        }
        value = f"{_encode_part(_UNSIGNED_HEADER)}.{_encode_part(claims)}."
        return Token(value, expires)


def _whole_seconds(moment: datetime.datetime) -> int:
    """Seconds since the epoch, floored, with exact integer arithmetic (no float rounding)."""
    return (moment - _EPOCH) // _SECOND


def _encode_part(part: dict[str, Any]) -> str:
    raw = json.dumps(part, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _decode_part(part: str, what: str) -> dict[str, Any]:
    if not _BASE64URL.fullmatch(part):
        raise InvalidArgument(f"token {what} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"token {what} is not valid base64url: {exc}") from exc
    try:
        decoded = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"token {what} is not JSON") from exc
    if not isinstance(decoded, dict):
        raise InvalidArgument(f"token {what} is not a JSON object")
    return decoded


def decode_claims(token: str) -> dict[str, Any]:
    """The claims (payload) of a compact JWT, signed or not. Verifies **nothing**.

    The header must decode to a JSON object too (NSM's ``tokens_valid`` policy: every token
    decodes as a JWT); the signature part is not checked.

    Raises:
        InvalidArgument: naming what is malformed: the number of parts, the header or the payload
            (not base64url, not JSON, not a JSON object).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidArgument(
            f"token is not a compact JWT: {len(parts)} dot-separated parts instead of 3"
        )
    _decode_part(parts[0], "header")
    return _decode_part(parts[1], "payload")


def format_expires(moment: datetime.datetime) -> str:
    """``moment`` as Go's ``time.RFC3339Nano`` in UTC (``2026-11-29T12:00:00.123456Z``).

    Go's layout trims trailing zeros of the fraction and drops it when zero; a datetime carries
    microseconds, so at most 6 digits appear. A naive datetime is taken as UTC (as the Clock does).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    moment = moment.astimezone(_UTC)
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_expires(text: str) -> datetime.datetime:
    """An RFC 3339 time as Go's RFC3339Nano writes it, as an aware UTC datetime.

    Any number of fraction digits and any ``±hh:mm`` offset are accepted; the fraction is
    truncated to microseconds (datetime's resolution), so ``…00.123456789Z`` reads as
    ``…00.123456``. :func:`format_expires` then gives the same instant back.

    Raises:
        InvalidArgument: the text is not an RFC 3339 date-time, or names an impossible one.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"token expiry {text!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, fraction, _, sign, off_h, off_m = match.groups()
    microsecond = int((fraction or "").ljust(6, "0")[:6])
    try:
        if sign is None:
            zone = _UTC
        else:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError(f"offset {sign}{off_h}:{off_m} out of range")
            offset = datetime.timedelta(hours=int(off_h), minutes=int(off_m))
            zone = datetime.timezone(-offset if sign == "-" else offset)
        moment = datetime.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, zone
        )
        return moment.astimezone(_UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"token expiry {text!r} is not a valid time: {exc}") from exc


def client_metadata(token: Token) -> dict[str, str]:
    """NSM's per-RPC metadata for ``token``: ``nsm-client-token`` and its RFC3339Nano expiry."""
    return {CLIENT_TOKEN: token.value, CLIENT_TOKEN_EXPIRES: format_expires(token.expires)}
