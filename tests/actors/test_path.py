"""NSM's path and token model (nsm-reference §3): updatepath, the way back, trimpath, updatetoken,
and the refresh and timeout arithmetic (§2.6).

The updatepath cases of NSM's own unit tests (sdk ``updatepath/common_test.go``, ``server_test.go``,
``client_test.go``) come first, rewritten; then whole paths built hop by hop (local 4 segments,
remote 6, inter-domain 8), a second pass that keeps every id, heal and reselect, and properties
over random paths (no input is ever mutated).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
from collections.abc import Callable, Iterator, Mapping
from itertools import count, pairwise

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trionsm.actors._path import (
    min_expires,
    refresh_after,
    restore_hop,
    server_deadline,
    trim_path,
    update_path,
    update_token,
)
from trionsm.api.connection import Connection, Path, PathSegment
from trionsm.clock import Clock
from trionsm.errors import InvalidArgument
from trionsm.identity import (
    CLIENT_TOKEN,
    CLIENT_TOKEN_EXPIRES,
    JwtTokenProvider,
    Token,
    client_metadata,
    decode_claims,
)

UTC = datetime.UTC
NSE_1, NSE_2, NSE_3 = "nse-1", "nse-2", "nse-3"
SEGMENT_ID_1 = "36ce7f0c-9f6d-40a4-8b39-6b56ff07eea9"
SEGMENT_ID_2 = "ece490ea-dfe8-4512-a3ca-5be7b39515c5"
SEGMENT_ID_3 = "f9a83e55-0a4f-3647-144a-98a9ee8fb231"
CONNECTION_ID = "54ec76a7-d642-43ca-87bc-ab51765f575a"


class Ids:
    """Deterministic fresh ids (``new-0``, ``new-1``, ...) that remember what they handed out."""

    def __init__(self, prefix: str = "new") -> None:
        self._numbers: Iterator[int] = count()
        self.prefix = prefix
        self.made: list[str] = []

    def __call__(self) -> str:
        made = f"{self.prefix}-{next(self._numbers)}"
        self.made.append(made)
        return made


def nsm_path(index: int, length: int) -> Path | None:
    """NSM's test helper ``path(index, n)``: segments nse-1.. with fixed ids, None for n == 0."""
    if length == 0:
        return None
    named = [(NSE_1, SEGMENT_ID_1), (NSE_2, SEGMENT_ID_2), (NSE_3, SEGMENT_ID_3)][:length]
    return Path(index=index, path_segments=[PathSegment(name=n, id=i) for n, i in named])


def request(connection_id: str, path: Path | None) -> Connection:
    return Connection(id=connection_id, path=path)


def shape(connection: Connection) -> tuple[int, list[tuple[str, str]]]:
    assert connection.path is not None
    return connection.path.index, [(s.name, s.id) for s in connection.path.path_segments]


def names(connection: Connection) -> list[str]:
    assert connection.path is not None
    return [s.name for s in connection.path.path_segments]


def ids(connection: Connection) -> list[str]:
    assert connection.path is not None
    return [s.id for s in connection.path.path_segments]


# -- NSM's updatepath cases (common_test.go, server_test.go, client_test.go) ----------------------


def test_no_path_no_id_makes_segment_zero_with_a_uuid() -> None:
    conn = update_path(request("", None), NSE_1)
    assert names(conn) == [NSE_1]
    assert conn.path is not None
    assert conn.path.index == 0
    assert len(conn.id) == 36  # a UUID string
    assert conn.id == ids(conn)[0]


def test_no_path_uses_the_connection_id() -> None:
    conn = update_path(request(CONNECTION_ID, None), NSE_1)
    assert shape(conn) == (0, [(NSE_1, CONNECTION_ID)])
    assert conn.id == CONNECTION_ID


@pytest.mark.parametrize("stale_index", [0, 3])
def test_an_empty_segment_list_is_an_empty_path(stale_index: int) -> None:
    conn = update_path(Connection(id="conn-1", path=Path(index=stale_index)), "nsc-1")
    assert shape(conn) == (0, [("nsc-1", "conn-1")])


def test_same_name_adopts_the_segment_id() -> None:
    conn = update_path(request(CONNECTION_ID, nsm_path(1, 2)), NSE_2)
    assert shape(conn) == shape(request(CONNECTION_ID, nsm_path(1, 2)))
    assert conn.id == SEGMENT_ID_2


def test_different_name_with_a_foreign_id_is_refused_naming_the_hop() -> None:
    with pytest.raises(InvalidArgument) as caught:
        update_path(request(CONNECTION_ID, nsm_path(1, 2)), NSE_3)
    assert caught.value.hop == NSE_3
    assert CONNECTION_ID in caught.value.reason
    assert SEGMENT_ID_2 in caught.value.reason
    assert NSE_2 in caught.value.reason  # the previous hop, whose segment does not match


@pytest.mark.parametrize(("index", "name"), [(3, NSE_3), (2, NSE_3), (2, NSE_2), (9, NSE_1)])
def test_an_index_past_the_path_is_refused(index: int, name: str) -> None:
    with pytest.raises(InvalidArgument, match="past the last") as caught:
        update_path(request(SEGMENT_ID_2, nsm_path(index, 2)), name)
    assert caught.value.hop == name


def test_a_different_next_name_is_renamed_with_a_new_id() -> None:
    path = nsm_path(1, 3)
    assert path is not None
    path.path_segments[2] = PathSegment(name="different", id=SEGMENT_ID_3, token="old", metrics={})
    fresh = Ids()
    conn = update_path(request(SEGMENT_ID_2, path), NSE_3, new_id=fresh)
    assert shape(conn) == (2, [(NSE_1, SEGMENT_ID_1), (NSE_2, SEGMENT_ID_2), (NSE_3, "new-0")])
    assert conn.id == "new-0"
    assert fresh.made == ["new-0"]
    assert conn.path is not None
    assert conn.path.path_segments[2].token == ""  # nothing inherited from the old hop


def test_no_next_segment_appends_one() -> None:
    conn = update_path(request(SEGMENT_ID_2, nsm_path(1, 2)), NSE_3, new_id=Ids())
    assert shape(conn) == (2, [(NSE_1, SEGMENT_ID_1), (NSE_2, SEGMENT_ID_2), (NSE_3, "new-0")])
    assert conn.id == "new-0"


def test_the_same_next_name_keeps_its_id() -> None:
    fresh = Ids()
    conn = update_path(request(SEGMENT_ID_2, nsm_path(1, 3)), NSE_3, new_id=fresh)
    assert shape(conn) == (2, shape(request("", nsm_path(1, 3)))[1])
    assert conn.id == SEGMENT_ID_3
    assert fresh.made == []


def test_a_server_gets_a_new_connection_id() -> None:
    # server_test.go: SetNewConnectionId / PathSegmentIdEqualConnectionId.
    conn = update_path(request(SEGMENT_ID_1, nsm_path(0, 1)), NSE_3)
    assert conn.id not in {SEGMENT_ID_1, CONNECTION_ID}
    assert conn.id == ids(conn)[1]
    assert names(conn) == [NSE_1, NSE_3]


def test_the_next_segment_keeps_the_rest_of_the_path() -> None:
    path = Path(index=0, path_segments=[PathSegment(name=n, id=f"{n}-id") for n in "abcd"])
    conn = update_path(Connection(id="a-id", path=path), "x", new_id=Ids())
    assert shape(conn) == (1, [("a", "a-id"), ("x", "new-0"), ("c", "c-id"), ("d", "d-id")])


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="needs a name"):
        update_path(Connection(id="c"), "")


# -- whole paths, hop by hop ----------------------------------------------------------------------


def arrived_index(connection: Connection) -> int:
    """The index a request arrived with, as NSM's updatepath returns it (0 for no segments)."""
    return connection.path.index if connection.path and connection.path.path_segments else 0


def serve(request: Connection, hops: list[str], new_id: Callable[[], str]) -> Connection:
    """Each hop's server then its own client (same name) runs updatepath; the last hop (the NSE)
    trims; on the way back each client and each server restores its caller's view."""
    name, rest = hops[0], hops[1:]
    conn = update_path(request, name, new_id=new_id)
    assert conn.path is not None
    if rest:
        outgoing = update_path(conn, name, new_id=new_id)  # the hop's client: same segment
        assert outgoing == conn
        assert outgoing.path is not None
        reply = serve(outgoing, rest, new_id)
        assert reply.path is not None
        assert reply.path.index == outgoing.path.index
        reply = restore_hop(reply, outgoing.path.index, outgoing.id)
    else:
        reply = trim_path(conn, conn.path.index)
    return restore_hop(reply, arrived_index(request))


def connect(
    hops: list[str], new_id: Callable[[], str], start: Connection | None = None
) -> Connection:
    """The NSC (hops[0]) requests through hops[1:]; returns what the NSC gets back."""
    nsc = update_path(start or Connection(id="nsc-1-0", network_service="icmp"), hops[0])
    reply = serve(nsc, hops[1:], new_id)
    assert reply.id == nsc.id
    return reply


LOCAL = ["nsc", "nsmgr", "forwarder", "nse"]
REMOTE = ["nsc", "nsmgr-1", "forwarder-1", "nsmgr-2", "forwarder-2", "nse"]
INTERDOMAIN = [
    "nsc",
    "nsmgr-1",
    "forwarder-1",
    "nsmgr-proxy-1",
    "nsmgr-proxy-2",
    "nsmgr-2",
    "forwarder-2",
    "nse",
]


@pytest.mark.parametrize(
    "hops", [LOCAL, REMOTE, INTERDOMAIN], ids=["local", "remote", "interdomain"]
)
def test_a_path_has_one_segment_per_hop(hops: list[str]) -> None:
    fresh = Ids()
    reply = connect(hops, fresh)
    assert names(reply) == hops  # 4, 6 and 8 segments
    assert ids(reply) == ["nsc-1-0", *fresh.made]
    assert reply.path is not None
    assert reply.path.index == 0
    assert reply.id == "nsc-1-0"
    assert len(set(ids(reply))) == len(hops)


@pytest.mark.parametrize("hops", [LOCAL, REMOTE], ids=["local", "remote"])
def test_a_refresh_keeps_every_id(hops: list[str]) -> None:
    first = connect(hops, Ids())
    again = Ids("again")
    second = connect(hops, again, start=first)
    assert ids(second) == ids(first)
    assert names(second) == hops
    assert again.made == []


def test_a_heal_through_another_forwarder_keeps_the_nse_id() -> None:
    first = connect(LOCAL, Ids())
    healed = connect(["nsc", "nsmgr", "forwarder-b", "nse"], Ids("heal"), start=first)
    assert names(healed) == ["nsc", "nsmgr", "forwarder-b", "nse"]
    assert ids(healed) == [*ids(first)[:2], "heal-0", ids(first)[3]]


def test_a_reselect_onto_a_shorter_path_trims_the_stale_tail() -> None:
    remote = connect(REMOTE, Ids())
    local = connect(["nsc", "nsmgr-1", "forwarder-1", "nse-local"], Ids("local"), start=remote)
    assert names(local) == ["nsc", "nsmgr-1", "forwarder-1", "nse-local"]
    assert ids(local) == [*ids(remote)[:3], "local-0"]


def test_the_way_back_restores_each_hop_view() -> None:
    reply = connect(LOCAL, Ids())
    for index, segment_id in enumerate(ids(reply)):
        at_hop = restore_hop(reply, index)
        assert at_hop.path is not None
        assert at_hop.path.index == index
        assert at_hop.id == segment_id
    explicit = restore_hop(reply, 1, "chosen")
    assert explicit.id == "chosen"
    assert explicit.path is not None
    assert explicit.path.index == 1


@pytest.mark.parametrize("index", [-1, 4])
def test_restore_needs_the_segment(index: int) -> None:
    with pytest.raises(InvalidArgument, match="no segment"):
        restore_hop(connect(LOCAL, Ids()), index)
    with pytest.raises(InvalidArgument):
        restore_hop(Connection(id="x"), 0)


def test_trim_path() -> None:
    reply = restore_hop(connect(REMOTE, Ids()), 3)
    trimmed = trim_path(reply, 3)
    assert names(trimmed) == REMOTE[:4]
    assert trimmed.path is not None
    assert trimmed.path.index == 3
    assert trimmed.id == reply.id
    assert names(trim_path(reply, 10)) == REMOTE
    assert trim_path(Connection(id="x"), 0) == Connection(id="x")
    with pytest.raises(InvalidArgument):
        trim_path(reply, -1)


# -- properties over random paths -----------------------------------------------------------------

HOP_NAMES = ["nsc", "nsmgr", "forwarder", "nse", "me"]
SEGMENT_IDS = ["id-a", "id-b", "id-c", ""]
stamps = st.none() | st.datetimes(
    min_value=datetime.datetime(2000, 1, 1),
    max_value=datetime.datetime(2100, 1, 1),
    timezones=st.just(UTC),
)
segments = st.builds(
    PathSegment,
    name=st.sampled_from(HOP_NAMES),
    id=st.sampled_from(SEGMENT_IDS),
    token=st.text(max_size=4),
    expires=stamps,
    metrics=st.dictionaries(st.sampled_from(["k", "v"]), st.text(max_size=3), max_size=2),
)


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    path_segments = draw(st.lists(segments, max_size=6))
    index = draw(st.integers(0, len(path_segments) + 1))
    candidates = list(SEGMENT_IDS)
    if index < len(path_segments):
        candidates.append(path_segments[index].id)
    path = (
        None
        if not path_segments and draw(st.booleans())
        else Path(index=index, path_segments=path_segments)
    )
    return Connection(id=draw(st.sampled_from(candidates)), network_service="icmp", path=path)


@given(connections(), st.sampled_from(HOP_NAMES))
def test_update_path_properties(connection: Connection, name: str) -> None:
    snapshot, wire = copy.deepcopy(connection), bytes(connection)
    given_segments = list(connection.path.path_segments) if connection.path else []
    index = arrived_index(connection)
    mine = index < len(given_segments) and given_segments[index].name == name
    refused = (
        bool(given_segments)
        and not mine
        and (index >= len(given_segments) or given_segments[index].id != connection.id)
    )
    if refused:
        with pytest.raises(InvalidArgument) as caught:
            update_path(connection, name, new_id=Ids())
        assert caught.value.hop == name
    else:
        result = update_path(connection, name, new_id=Ids())
        assert result.path is not None
        assert result.path is not connection.path
        result_segments = result.path.path_segments
        assert connection.path is None or result_segments is not connection.path.path_segments
        assert result_segments[result.path.index].name == name
        assert result_segments[result.path.index].id == result.id
        assert result.path.index in {index, index + 1} or not given_segments
        assert result_segments[: result.path.index] == given_segments[: result.path.index]
        assert len(result_segments) in {len(given_segments), len(given_segments) + 1, 1}
        assert update_path(result, name, new_id=Ids()) == result  # idempotent (rule 2)
        assert dataclasses.replace(result, id=connection.id, path=connection.path) == connection
    assert connection == snapshot  # never mutated
    assert bytes(connection) == wire


# -- tokens along the path (updatetoken) ----------------------------------------------------------

CLOCK = Clock(wall_at_zero=1_800_000_000.0)


def providers(hops: list[str], lifetime: float = 600.0) -> dict[str, JwtTokenProvider]:
    return {
        h: JwtTokenProvider(f"spiffe://test.com/{h}", lifetime=lifetime, clock=CLOCK) for h in hops
    }


def serve_with_tokens(
    request: Connection,
    metadata: Mapping[str, str],
    hops: list[str],
    by_hop: Mapping[str, JwtTokenProvider],
    caller: str,
) -> Connection:
    """serve() plus NSM's token flow: the server's updatetoken, its client's per-RPC token."""
    name, rest = hops[0], hops[1:]
    conn = update_path(request, name)
    assert conn.path is not None
    conn = update_token(
        conn,
        conn.path.index,
        caller_token=metadata.get(CLIENT_TOKEN),
        caller_expires=metadata.get(CLIENT_TOKEN_EXPIRES),
        provider=by_hop[name],
        audience=by_hop[caller].subject,
    )
    if rest:
        sent = client_metadata(by_hop[name].issue(audience=by_hop[rest[0]].subject))
        reply = serve_with_tokens(conn, sent, rest, by_hop, name)
    else:
        reply = trim_path(conn, arrived_index(conn))
    return restore_hop(reply, arrived_index(request))


async def test_every_segment_holds_the_token_its_hop_minted_for_the_next() -> None:
    by_hop = providers(REMOTE)
    nsc = update_path(Connection(id="nsc-1-0"), "nsc")
    nsc = update_token(nsc, 0, caller_token=None, caller_expires=None, provider=by_hop["nsc"])
    sent = client_metadata(by_hop["nsc"].issue(audience=by_hop["nsmgr-1"].subject))
    reply = serve_with_tokens(nsc, sent, REMOTE[1:], by_hop, "nsc")
    assert reply.path is not None
    claims = [decode_claims(s.token) for s in reply.path.path_segments]
    assert [c["sub"] for c in claims] == [by_hop[h].subject for h in REMOTE]
    for this, following in pairwise(claims):  # NSM's tokens_chained policy
        assert following["sub"] in this["aud"]
    assert claims[-1]["aud"] == [by_hop["forwarder-2"].subject]  # the NSE keeps its own token
    for segment, claim in zip(reply.path.path_segments, claims, strict=True):
        assert segment.expires is not None
        assert claim["exp"] == int(segment.expires.timestamp())


async def test_update_token_places_the_caller_token_before_ours() -> None:
    conn = connect(LOCAL, Ids())
    conn = restore_hop(conn, 2)
    own = JwtTokenProvider("spiffe://test.com/forwarder", clock=CLOCK)
    caller = Token("caller.token.", datetime.datetime(2027, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC))
    meta = client_metadata(caller)
    snapshot = copy.deepcopy(conn)
    updated = update_token(
        conn,
        2,
        caller_token=meta[CLIENT_TOKEN],
        caller_expires=meta[CLIENT_TOKEN_EXPIRES],
        provider=own,
        audience="spiffe://test.com/nsmgr",
    )
    assert conn == snapshot
    assert updated.path is not None
    assert updated.path.index == 2
    assert updated.id == conn.id
    before, mine = updated.path.path_segments[1], updated.path.path_segments[2]
    assert (before.token, before.expires) == ("caller.token.", caller.expires)
    assert decode_claims(mine.token)["aud"] == ["spiffe://test.com/nsmgr"]
    assert mine.expires == CLOCK.timestamp(trio.current_time() + 600.0).replace(microsecond=0)
    assert names(updated) == names(conn)
    assert ids(updated) == ids(conn)
    assert conn.path is not None
    assert updated.path.path_segments[0] is conn.path.path_segments[0]  # unchanged: shared


async def test_update_token_without_a_caller_token_only_mints() -> None:
    conn = restore_hop(connect(LOCAL, Ids()), 1)
    own = JwtTokenProvider("spiffe://test.com/nsmgr", clock=CLOCK)
    updated = update_token(conn, 1, caller_token=None, caller_expires="junk", provider=own)
    assert updated.path is not None
    assert conn.path is not None
    assert updated.path.path_segments[0] == conn.path.path_segments[0]
    assert decode_claims(updated.path.path_segments[1].token)["aud"] == []
    first = update_token(conn, 0, caller_token="ignored", caller_expires=None, provider=own)
    assert first.path is not None
    assert first.path.path_segments[0].token != "ignored"


@pytest.mark.parametrize(
    ("index", "token", "expires", "match"),
    [
        (4, None, None, "not one of 4"),
        (-1, None, None, "not one of 4"),
        (2, "t", None, "without nsm-client-token-expires"),
        (2, "t", "yesterday", "not an RFC 3339 time"),
    ],
)
async def test_update_token_refuses_bad_input(
    index: int, token: str | None, expires: str | None, match: str
) -> None:
    conn = connect(LOCAL, Ids())
    own = JwtTokenProvider("spiffe://test.com/forwarder", clock=CLOCK)
    with pytest.raises(InvalidArgument, match=match) as caught:
        update_token(conn, index, caller_token=token, caller_expires=expires, provider=own)
    if token is not None:
        assert caught.value.hop == "forwarder"


# -- expiry: refresh and timeout (§2.6) -----------------------------------------------------------


def timed_path(lifetimes: list[float | None], clock: Clock, index: int = 0) -> Path:
    """Segments seg-0.. expiring ``lifetime`` seconds from now (None: no expiry)."""
    return Path(
        index=index,
        path_segments=[
            PathSegment(
                name=f"seg-{i}",
                id=f"id-{i}",
                expires=None if life is None else clock.timestamp(trio.current_time() + life),
            )
            for i, life in enumerate(lifetimes)
        ],
    )


async def test_min_expires() -> None:
    clock = Clock(wall_at_zero=1_800_000_000.0)
    path = timed_path([600, None, 300, 900], clock)
    assert min_expires(path) == path.path_segments[2].expires
    assert min_expires(timed_path([None, None], clock)) is None
    assert min_expires(None) is None
    assert min_expires(Path()) is None
    naive = Path(path_segments=[PathSegment(expires=datetime.datetime(2030, 1, 1))])
    assert min_expires(naive) == datetime.datetime(2030, 1, 1, tzinfo=UTC)


async def test_the_nsc_refreshes_at_20_percent_of_a_4_segment_path(autojump_clock: object) -> None:
    clock = Clock(wall_at_zero=1_800_000_000.0)
    await trio.sleep(5)
    path = timed_path([600, 600, 600, 600], clock)
    assert refresh_after(path, 0, clock=clock) == pytest.approx(120.0)  # NSM: every 2 min
    assert refresh_after(path, 2, clock=clock) == pytest.approx(600 * 0.3)
    await trio.sleep(100)
    assert refresh_after(path, 0, clock=clock) == pytest.approx(100.0)  # 20 % of what is left


async def test_the_shortest_segment_sets_the_refresh(autojump_clock: object) -> None:
    clock = Clock(wall_at_zero=1_800_000_000.0)
    path = timed_path([900, 900, 300, None, 900, 900], clock)
    assert refresh_after(path, 1, clock=clock) == pytest.approx(300 * (0.2 + 0.2 / 6))


async def test_a_single_segment_refreshes_at_a_third(autojump_clock: object) -> None:
    clock = Clock(wall_at_zero=1_800_000_000.0)
    assert refresh_after(timed_path([900], clock), 0, clock=clock) == pytest.approx(300.0)


async def test_refresh_edges(autojump_clock: object) -> None:
    clock = Clock(wall_at_zero=1_800_000_000.0)
    assert refresh_after(timed_path([600, -1], clock), 0, clock=clock) == 0.0
    assert refresh_after(timed_path([None, None], clock), 1, clock=clock) == math.inf
    assert refresh_after(None, 0, clock=clock) == math.inf
    with pytest.raises(InvalidArgument):
        refresh_after(timed_path([600, 600], clock), 2, clock=clock)


async def test_server_deadline_is_the_previous_expiry_minus_the_request_timeout(
    autojump_clock: object,
) -> None:
    clock = Clock(wall_at_zero=1_800_000_000.0)
    await trio.sleep(42)
    path = timed_path([600, 300, None, 900], clock)
    assert server_deadline(path, 1, 15.0, clock=clock) == pytest.approx(42 + 600 - 15)
    assert server_deadline(path, 2, 15.0, clock=clock) == pytest.approx(42 + 300 - 15)
    assert server_deadline(path, 3, 15.0, clock=clock) == math.inf  # previous has no expiry
    assert server_deadline(path, 0, 15.0, clock=clock) == math.inf  # no previous hop
    for bad in (-1, 4):
        with pytest.raises(InvalidArgument):
            server_deadline(path, bad, 15.0, clock=clock)


async def test_a_server_deadline_fires_with_mock_time(autojump_clock: object) -> None:
    clock = Clock(wall_at_zero=1_800_000_000.0)
    caller = JwtTokenProvider("spiffe://test.com/nsc", lifetime=60.0, clock=clock)
    conn = update_path(Connection(id="c"), "nsc")
    conn = update_token(conn, 0, caller_token=None, caller_expires=None, provider=caller)
    conn = update_path(conn, "nsmgr")
    assert conn.path is not None
    deadline = server_deadline(conn.path, 1, 15.0, clock=clock)
    assert 44 < deadline - trio.current_time() <= 45  # exp is whole seconds
    with trio.move_on_at(deadline) as scope:
        await trio.sleep_forever()
    assert scope.cancelled_caught
    expires = conn.path.path_segments[0].expires
    assert expires is not None
    assert clock.remaining(expires) == pytest.approx(15.0, abs=1.0)
