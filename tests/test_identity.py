"""trionsm.identity's token model: JWT-shaped unsigned tokens, claims, RFC3339Nano expiry strings,
the per-RPC metadata pair (nsm-reference §1.6, §3)."""

from __future__ import annotations

import base64
import datetime
import json
import math

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trionsm import transport
from trionsm.clock import Clock, current_clock
from trionsm.errors import InvalidArgument
from trionsm.identity import (
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

UTC = datetime.UTC
WALL = 1_800_000_000.0  # 2027-01-15T08:00:00Z
SUBJECT = "spiffe://example.org/ns/default/sa/nsc"


def utc(*fields: int) -> datetime.datetime:
    return datetime.datetime(*fields).replace(tzinfo=UTC)  # type: ignore[arg-type]


def b64(part: object) -> str:
    raw = part if isinstance(part, bytes) else json.dumps(part).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_metadata_keys_are_transports() -> None:
    assert CLIENT_TOKEN == transport.CLIENT_TOKEN == "nsm-client-token"
    assert CLIENT_TOKEN_EXPIRES == transport.CLIENT_TOKEN_EXPIRES == "nsm-client-token-expires"


async def test_an_issued_token_carries_nsm_claims_unsigned() -> None:
    clock = Clock(wall_at_zero=WALL - trio.current_time())  # now is WALL
    provider: TokenProvider = JwtTokenProvider(SUBJECT, clock=clock)
    token = provider.issue(audience="spiffe://example.org/nsmgr")
    header, payload, signature = token.value.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "none", "typ": "JWT"}
    assert signature == ""
    assert "=" not in token.value
    claims = decode_claims(token.value)
    assert claims == {
        "sub": SUBJECT,
        "aud": ["spiffe://example.org/nsmgr"],
        "exp": int(WALL) + 600,
        "iat": int(WALL),
    }
    assert token.expires == utc(2027, 1, 15, 8, 10)
    raw_payload = base64.urlsafe_b64decode(payload + "==")
    assert json.loads(raw_payload) == claims
    assert b" " not in raw_payload  # compact JSON


async def test_without_an_audience_aud_is_an_empty_list() -> None:
    assert decode_claims(JwtTokenProvider(SUBJECT).issue().value)["aud"] == []


async def test_expires_equals_the_exp_claim_in_whole_seconds() -> None:
    clock = Clock(wall_at_zero=WALL + 0.75 - trio.current_time())
    token = JwtTokenProvider(SUBJECT, lifetime=30.5, clock=clock).issue()
    exp = decode_claims(token.value)["exp"]
    assert exp == int(WALL) + 31  # floor(WALL + 0.75 + 30.5)
    assert token.expires == datetime.datetime.fromtimestamp(exp, tz=UTC)
    assert token.expires.microsecond == 0


async def test_expiry_follows_mock_time(autojump_clock: object) -> None:
    clock = Clock(wall_at_zero=WALL)
    provider = JwtTokenProvider(SUBJECT, lifetime=60.0, clock=clock)
    first = provider.issue()
    await trio.sleep(125)
    second = provider.issue()
    assert (second.expires - first.expires).total_seconds() == 125
    assert decode_claims(second.value)["iat"] - decode_claims(first.value)["iat"] == 125
    assert 59 < clock.remaining(second.expires) <= 60
    await trio.sleep(60)
    assert clock.remaining(second.expires) <= 0  # expired in mock time


async def test_the_default_clock_is_the_runs_clock(autojump_clock: object) -> None:
    provider = JwtTokenProvider(SUBJECT)
    assert provider.lifetime == DEFAULT_TOKEN_LIFETIME == 600.0
    token = provider.issue()
    assert 599 < current_clock().remaining(token.expires) <= 600
    await trio.sleep(1000)
    assert current_clock().remaining(provider.issue().expires) > 599


@pytest.mark.parametrize(
    ("subject", "lifetime"), [("", 600.0), (SUBJECT, 0.0), (SUBJECT, -1.0), (SUBJECT, math.nan)]
)
def test_a_provider_needs_a_subject_and_a_positive_lifetime(subject: str, lifetime: float) -> None:
    with pytest.raises(InvalidArgument):
        JwtTokenProvider(subject, lifetime=lifetime)


def test_a_token_repr_hides_the_credential() -> None:
    token = Token("secret.value.sig", utc(2030, 1, 1))
    assert "secret" not in repr(token)
    assert "2030" in repr(token)


def test_decode_claims_reads_a_signed_token_too() -> None:
    # NSM's sandbox tokens are HS256: claims decode, the signature is not checked here.
    token = (
        f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'sub': 'spiffe://test.com/subject'})}.c2ln"
    )
    assert decode_claims(token) == {"sub": "spiffe://test.com/subject"}


GOOD_HEADER, GOOD_PAYLOAD = b64({"alg": "none"}), b64({"sub": "x"})


@pytest.mark.parametrize(
    ("token", "what"),
    [
        ("", "parts"),
        ("abc", "parts"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}", "parts"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}.sig.extra", "parts"),
        (f"!!.{GOOD_PAYLOAD}.", "header is not unpadded base64url"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}==.", "payload is not unpadded base64url"),
        (f"{GOOD_HEADER}.a.", "payload is not valid base64url"),
        (f"{b64(b'not json')}.{GOOD_PAYLOAD}.", "header is not JSON"),
        (f"{GOOD_HEADER}.{b64(bytes([0xFF, 0xFE]))}.", "payload is not JSON"),
        (f"{GOOD_HEADER}.{b64([1, 2])}.", "payload is not a JSON object"),
        (f"{b64('text')}.{GOOD_PAYLOAD}.", "header is not a JSON object"),
        (f"{GOOD_HEADER}.+/.", "payload is not unpadded base64url"),
    ],
)
def test_malformed_tokens_say_what_is_wrong(token: str, what: str) -> None:
    with pytest.raises(InvalidArgument, match=what):
        decode_claims(token)


# -- RFC3339Nano ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (
            utc(2026, 11, 29, 12, 0, 0, 123456),
            "2026-11-29T12:00:00.123456Z",
        ),
        (utc(2026, 11, 29, 12, 0, 0, 120000), "2026-11-29T12:00:00.12Z"),
        (utc(2026, 11, 29, 12, 0, 0, 1), "2026-11-29T12:00:00.000001Z"),
        (utc(2026, 11, 29, 12, 0, 0), "2026-11-29T12:00:00Z"),
        (datetime.datetime(2026, 11, 29, 12, 0, 0), "2026-11-29T12:00:00Z"),  # naive is UTC
        (
            datetime.datetime(
                2026, 11, 29, 14, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
            ),
            "2026-11-29T12:30:00Z",
        ),
        (utc(1, 1, 1), "0001-01-01T00:00:00Z"),
    ],
)
def test_format_expires_is_gos_rfc3339nano(moment: datetime.datetime, text: str) -> None:
    assert format_expires(moment) == text


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        (
            "2026-11-29T12:00:00.123456789Z",
            utc(2026, 11, 29, 12, 0, 0, 123456),
        ),
        ("2026-11-29T12:00:00.1Z", utc(2026, 11, 29, 12, 0, 0, 100000)),
        ("2026-11-29T12:00:00Z", utc(2026, 11, 29, 12, 0, 0)),
        (
            "2026-11-29T14:00:00.5+02:00",
            utc(2026, 11, 29, 12, 0, 0, 500000),
        ),
        ("2026-11-29T10:30:00-01:30", utc(2026, 11, 29, 12, 0, 0)),
        ("2026-11-29t12:00:00z", utc(2026, 11, 29, 12, 0, 0)),
        ("2026-11-29T12:00:00.000000001Z", utc(2026, 11, 29, 12, 0, 0)),
    ],
)
def test_parse_expires_reads_gos_rfc3339nano(text: str, moment: datetime.datetime) -> None:
    parsed = parse_expires(text)
    assert parsed == moment
    assert parsed.tzinfo == UTC


def test_a_nanosecond_string_round_trips_to_microseconds() -> None:
    go = "2026-11-29T12:00:00.123456789Z"
    assert format_expires(parse_expires(go)) == "2026-11-29T12:00:00.123456Z"
    assert parse_expires(format_expires(parse_expires(go))) == parse_expires(go)


@given(st.datetimes(timezones=st.just(UTC)))
def test_format_then_parse_is_the_same_instant(moment: datetime.datetime) -> None:
    text = format_expires(moment)
    assert parse_expires(text) == moment
    assert format_expires(parse_expires(text)) == text


OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
)


@given(
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),
        max_value=datetime.datetime(9999, 12, 30),
        timezones=OFFSETS,
    )
)
def test_any_offset_formats_as_the_same_utc_instant(moment: datetime.datetime) -> None:
    assert parse_expires(format_expires(moment)) == moment.astimezone(UTC)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-11-29 12:00:00Z",
        "2026-11-29T12:00:00",
        "2026-11-29T12:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-29T24:00:00Z",
        "2026-11-29T12:00:60Z",
        "2026-11-29T12:00:00.Z",
        "2026-11-29T12:00:00+24:00",
        "2026-11-29T12:00:00+02:60",
        "2026-11-29T12:00:00+0200",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        " 2026-11-29T12:00:00Z",
        "2026-11-29T12:00:00Z\n",
        "\u0662026-11-29T12:00:00Z",  # a non-ASCII digit
    ],
)
def test_malformed_expiry_strings_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="token expiry"):
        parse_expires(text)


def test_client_metadata_is_nsms_per_rpc_pair() -> None:
    token = Token("h.p.", utc(2026, 11, 29, 12, 0, 0, 250000))
    assert client_metadata(token) == {
        "nsm-client-token": "h.p.",
        "nsm-client-token-expires": "2026-11-29T12:00:00.25Z",
    }
