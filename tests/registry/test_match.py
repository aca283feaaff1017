"""Find's rules (nsm-reference §1.4), field by field, and their properties.

Endpoints: ``name`` exact; ``network_service_labels`` per service, a subset; ``expiration_time``
equal whole seconds; ``network_service_names`` a subset; ``url`` a substring. Services: ``name``
and ``payload`` exact, ``matches`` equal as a whole. An unset field does not narrow; an empty query
matches everything.
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from trionsm.actors.registry import endpoint_matches, service_matches
from trionsm.api.registry import (
    Destination,
    Match,
    Metadata,
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceLabels,
)

UTC = datetime.UTC
T0 = datetime.datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def _labels(**by_service: dict[str, str]) -> dict[str, NetworkServiceLabels]:
    return {
        service: NetworkServiceLabels(labels=dict(labels)) for service, labels in by_service.items()
    }


def _nse(**fields: object) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(**fields)  # type: ignore[arg-type]


ENTRY = NetworkServiceEndpoint(
    name="nse-1",
    network_service_names=["vpn", "firewall", "dns"],
    network_service_labels={
        "vpn": NetworkServiceLabels(labels={"app": "vpn-gw", "zone": "eu"}),
        "firewall": NetworkServiceLabels(labels={}),
    },
    url="tcp://10.0.0.7:5002",
    expiration_time=T0.replace(microsecond=250_000),
)


# -- endpoints: one field at a time ---------------------------------------------------------------


def test_empty_query_matches_every_endpoint() -> None:
    assert endpoint_matches(NetworkServiceEndpoint(), ENTRY)
    assert endpoint_matches(NetworkServiceEndpoint(), NetworkServiceEndpoint())
    assert endpoint_matches(NetworkServiceEndpoint(), NetworkServiceEndpoint(name="other"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("nse-1", True), ("nse-2", False), ("nse", False), ("nse-1x", False), ("NSE-1", False)],
)
def test_endpoint_name_is_exact(name: str, expected: bool) -> None:
    assert endpoint_matches(NetworkServiceEndpoint(name=name), ENTRY) is expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (_labels(vpn={"app": "vpn-gw"}), True),
        (_labels(vpn={"app": "vpn-gw", "zone": "eu"}), True),
        (_labels(vpn={"app": "other"}), False),
        (_labels(vpn={"app": "vpn-gw", "zone": "us"}), False),
        (_labels(vpn={"tier": "gold"}), False),  # a label the endpoint lacks
        (_labels(vpn={"app": ""}), False),  # an empty value still has to be present
        (_labels(vpn={}), True),  # an empty set only asks for the service key
        (_labels(firewall={}), True),
        (_labels(dns={}), False),  # dns is served but has no label set
        (_labels(unknown={}), False),  # the service key is missing
        (_labels(firewall={"app": "vpn-gw"}), False),  # labels are per service
        (_labels(vpn={"app": "vpn-gw"}, firewall={}), True),
        (_labels(vpn={"app": "vpn-gw"}, dns={}), False),
    ],
)
def test_endpoint_labels_are_a_subset_per_service(
    labels: dict[str, NetworkServiceLabels], expected: bool
) -> None:
    assert (
        endpoint_matches(NetworkServiceEndpoint(network_service_labels=labels), ENTRY) is expected
    )


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (T0, True),  # 12:00:00.000 against 12:00:00.250
        (T0.replace(microsecond=999_999), True),
        (T0.replace(microsecond=250_000), True),
        (T0 - datetime.timedelta(microseconds=1), False),  # 11:59:59.999999
        (T0 + datetime.timedelta(seconds=1), False),
        (T0 - datetime.timedelta(seconds=1), False),
        (T0.astimezone(datetime.timezone(datetime.timedelta(hours=2))), True),  # same instant
    ],
)
def test_endpoint_expiration_time_compares_whole_seconds(
    moment: datetime.datetime, expected: bool
) -> None:
    assert endpoint_matches(NetworkServiceEndpoint(expiration_time=moment), ENTRY) is expected


def test_endpoint_expiration_time_in_query_needs_one_on_the_entry() -> None:
    unset = NetworkServiceEndpoint(name="nse-1", url="tcp://10.0.0.7:5002")
    assert not endpoint_matches(NetworkServiceEndpoint(expiration_time=T0), unset)
    assert endpoint_matches(NetworkServiceEndpoint(name="nse-1"), unset)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # the wire's Timestamp.seconds is floored: 1969-12-31T23:59:59.5 has seconds = -1
        (
            datetime.datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
            datetime.datetime(1970, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC),
            False,
        ),
        (
            datetime.datetime(1969, 12, 31, 23, 59, 59, 100_000, tzinfo=UTC),
            datetime.datetime(1969, 12, 31, 23, 59, 59, 900_000, tzinfo=UTC),
            True,
        ),
        # far in the future a float timestamp would round .999999 up into the next second
        (
            datetime.datetime(9999, 12, 31, 23, 59, 58, 999_999, tzinfo=UTC),
            datetime.datetime(9999, 12, 31, 23, 59, 58, tzinfo=UTC),
            True,
        ),
        (
            datetime.datetime(9999, 12, 31, 23, 59, 58, 999_999, tzinfo=UTC),
            datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
            False,
        ),
    ],
)
def test_endpoint_expiration_time_seconds_are_the_wire_seconds(
    first: datetime.datetime, second: datetime.datetime, expected: bool
) -> None:
    query = NetworkServiceEndpoint(expiration_time=first)
    assert endpoint_matches(query, NetworkServiceEndpoint(expiration_time=second)) is expected
    query = NetworkServiceEndpoint(expiration_time=second)
    assert endpoint_matches(query, NetworkServiceEndpoint(expiration_time=first)) is expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["vpn"], True),
        (["dns"], True),
        (["web"], False),
        (["vpn", "dns"], True),
        (["dns", "vpn"], True),  # order does not matter
        (["dns", "firewall", "vpn"], True),
        (["vpn", "web"], False),
        (["vpn", "dns", "web"], False),
        (["vpn", "vpn"], True),  # a repeated name is still a subset
        (["vp"], False),  # names are whole, not prefixes
    ],
)
def test_endpoint_service_names_are_a_subset(names: list[str], expected: bool) -> None:
    assert endpoint_matches(NetworkServiceEndpoint(network_service_names=names), ENTRY) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://10.0.0.7:5002", True),
        ("10.0.0.7", True),
        ("tcp://", True),
        (":5002", True),
        ("0.7:50", True),
        ("tcp://10.0.0.7:50021", False),
        ("unix://", False),
        ("10.0.0.8", False),
    ],
)
def test_endpoint_url_is_a_substring(url: str, expected: bool) -> None:
    assert endpoint_matches(NetworkServiceEndpoint(url=url), ENTRY) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (_nse(name="nse-1", network_service_names=["vpn"]), True),
        (_nse(name="nse-1", network_service_names=["web"]), False),
        (_nse(name="nse-2", network_service_names=["vpn"]), False),
        (_nse(network_service_names=["vpn", "dns"], url="10.0.0.7"), True),
        (_nse(network_service_names=["vpn", "dns"], url="10.0.0.8"), False),
        (
            _nse(
                name="nse-1",
                network_service_names=["vpn", "firewall"],
                network_service_labels=_labels(vpn={"zone": "eu"}),
                url=":5002",
                expiration_time=T0,
            ),
            True,
        ),
        (
            _nse(
                name="nse-1",
                network_service_names=["vpn", "firewall"],
                network_service_labels=_labels(vpn={"zone": "eu"}),
                url=":5002",
                expiration_time=T0 + datetime.timedelta(seconds=1),
            ),
            False,
        ),
        (
            _nse(
                network_service_names=["vpn"],
                network_service_labels=_labels(vpn={"zone": "us"}),
            ),
            False,
        ),
    ],
)
def test_endpoint_fields_combine_with_and(query: NetworkServiceEndpoint, expected: bool) -> None:
    assert endpoint_matches(query, ENTRY) is expected


# -- services -------------------------------------------------------------------------------------

MATCH_A = Match(
    source_selector={"app": "client"},
    routes=[Destination(destination_selector={"app": "vpn-gw"}, weight=1)],
    metadata=Metadata(labels={"forwarder": "vpp"}),
)
MATCH_B = Match(source_selector={}, routes=[Destination(destination_selector={"app": "fallback"})])
SERVICE = NetworkService(name="vpn", payload="ETHERNET", matches=[MATCH_A, MATCH_B])


def test_empty_query_matches_every_service() -> None:
    assert service_matches(NetworkService(), SERVICE)
    assert service_matches(NetworkService(), NetworkService())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (NetworkService(name="vpn"), True),
        (NetworkService(name="vp"), False),
        (NetworkService(name="VPN"), False),
        (NetworkService(payload="ETHERNET"), True),
        (NetworkService(payload="IP"), False),
        (NetworkService(name="vpn", payload="ETHERNET"), True),
        (NetworkService(name="vpn", payload="IP"), False),
        (NetworkService(name="dns", payload="ETHERNET"), False),
    ],
)
def test_service_name_and_payload_are_exact(query: NetworkService, expected: bool) -> None:
    assert service_matches(query, SERVICE) is expected


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        ([MATCH_A, MATCH_B], True),
        (
            [
                Match(
                    source_selector={"app": "client"},
                    routes=[Destination(destination_selector={"app": "vpn-gw"}, weight=1)],
                    metadata=Metadata(labels={"forwarder": "vpp"}),
                ),
                Match(routes=[Destination(destination_selector={"app": "fallback"})]),
            ],
            True,  # equal by value, not identity
        ),
        ([MATCH_B, MATCH_A], False),  # same matches, another order
        ([MATCH_A], False),  # a prefix is not equal
        ([MATCH_A, MATCH_B, MATCH_B], False),
        (
            [
                Match(
                    source_selector={"app": "client"},
                    routes=[Destination(destination_selector={"app": "vpn-gw"}, weight=2)],
                    metadata=Metadata(labels={"forwarder": "vpp"}),
                ),
                MATCH_B,
            ],
            False,  # one weight differs
        ),
        ([MATCH_A, Match(source_selector={}, routes=MATCH_B.routes, fallthrough=True)], False),
    ],
)
def test_service_matches_must_be_equal_as_a_whole(matches: list[Match], expected: bool) -> None:
    assert service_matches(NetworkService(matches=matches), SERVICE) is expected
    assert service_matches(NetworkService(name="vpn", matches=matches), SERVICE) is expected


def test_service_query_matches_needs_matches_on_the_entry() -> None:
    bare = NetworkService(name="vpn", payload="ETHERNET")
    assert not service_matches(NetworkService(matches=[MATCH_A]), bare)
    assert service_matches(NetworkService(name="vpn"), bare)


# -- properties -----------------------------------------------------------------------------------

SERVICES = ("vpn", "firewall", "dns", "web")
KEYS = ("app", "zone", "tier")
VALUES = ("a", "b", "")

moments = st.datetimes(
    min_value=datetime.datetime(1900, 1, 1),
    max_value=datetime.datetime(9999, 12, 31),
    timezones=st.just(UTC),
)
label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
endpoints = st.builds(
    NetworkServiceEndpoint,
    name=st.sampled_from(("", "nse-1", "nse-2")),
    network_service_names=st.lists(st.sampled_from(SERVICES), unique=True, max_size=4),
    network_service_labels=st.dictionaries(
        st.sampled_from(SERVICES),
        label_sets.map(lambda labels: NetworkServiceLabels(labels=labels)),
    ),
    url=st.sampled_from(("", "tcp://10.0.0.1:5001", "tcp://10.0.0.2:5001", "unix:///run/nse.sock")),
    expiration_time=st.none() | moments,
)


@st.composite
def queries_from(draw: st.DrawFn, entry: NetworkServiceEndpoint) -> NetworkServiceEndpoint:
    """A query built from a subset of ``entry``'s own fields (each narrowed to a part of it)."""
    query = NetworkServiceEndpoint()
    if draw(st.booleans()):
        query.name = entry.name
    if entry.url and draw(st.booleans()):
        start = draw(st.integers(0, len(entry.url) - 1))
        end = draw(st.integers(start + 1, len(entry.url)))
        query.url = entry.url[start:end]
    if entry.network_service_names:
        query.network_service_names = draw(
            st.lists(st.sampled_from(entry.network_service_names), max_size=5)
        )
    served = sorted(entry.network_service_labels)
    for service in draw(st.lists(st.sampled_from(served), unique=True)) if served else []:
        labels = entry.network_service_labels[service].labels
        keys = draw(st.lists(st.sampled_from(sorted(labels)), unique=True)) if labels else []
        query.network_service_labels[service] = NetworkServiceLabels(
            labels={key: labels[key] for key in keys}
        )
    if entry.expiration_time is not None and draw(st.booleans()):
        # the same whole second, any fraction of it
        query.expiration_time = entry.expiration_time.replace(
            microsecond=draw(st.integers(0, 999_999))
        )
    return query


@given(st.data(), endpoints)
def test_an_endpoint_matches_any_query_built_from_its_own_fields(
    data: st.DataObject, entry: NetworkServiceEndpoint
) -> None:
    assert endpoint_matches(data.draw(queries_from(entry)), entry)


endpoint_queries = st.builds(
    NetworkServiceEndpoint,
    name=st.sampled_from(("", "nse-1", "nse-2")),
    network_service_names=st.lists(st.sampled_from(SERVICES), max_size=3),
    network_service_labels=st.dictionaries(
        st.sampled_from(SERVICES),
        label_sets.map(lambda labels: NetworkServiceLabels(labels=labels)),
        max_size=2,
    ),
    url=st.sampled_from(("", "tcp://", "10.0.0.1", ":5001", "unix://", "nse.sock")),
    expiration_time=st.none() | moments,
)


def _narrow(query: NetworkServiceEndpoint, extra: NetworkServiceEndpoint) -> NetworkServiceEndpoint:
    """``query`` with ``extra``'s fields added (a set field of ``query`` is kept)."""
    labels = {
        service: dict(value.labels) for service, value in query.network_service_labels.items()
    }
    for service, value in extra.network_service_labels.items():
        for key, label in value.labels.items():
            labels.setdefault(service, {}).setdefault(key, label)
        labels.setdefault(service, {})
    return NetworkServiceEndpoint(
        name=query.name or extra.name,
        network_service_names=[*query.network_service_names, *extra.network_service_names],
        network_service_labels=_labels(**labels),
        url=query.url or extra.url,
        expiration_time=query.expiration_time or extra.expiration_time,
    )


@given(endpoint_queries, endpoint_queries, endpoints)
@example(
    NetworkServiceEndpoint(),
    NetworkServiceEndpoint(network_service_labels=_labels(vpn={})),
    NetworkServiceEndpoint(network_service_names=["vpn"]),
)
def test_adding_a_field_to_an_endpoint_query_never_widens_it(
    query: NetworkServiceEndpoint, extra: NetworkServiceEndpoint, entry: NetworkServiceEndpoint
) -> None:
    if endpoint_matches(_narrow(query, extra), entry):
        assert endpoint_matches(query, entry)


def _one_field_queries(query: NetworkServiceEndpoint) -> list[NetworkServiceEndpoint]:
    parts = [
        NetworkServiceEndpoint(name=query.name),
        NetworkServiceEndpoint(url=query.url),
        NetworkServiceEndpoint(expiration_time=query.expiration_time),
    ]
    parts += [
        NetworkServiceEndpoint(network_service_names=[n]) for n in query.network_service_names
    ]
    parts += [
        NetworkServiceEndpoint(network_service_labels={service: labels})
        for service, labels in query.network_service_labels.items()
    ]
    return parts


@given(endpoint_queries, endpoints)
def test_an_endpoint_query_is_the_and_of_its_fields(
    query: NetworkServiceEndpoint, entry: NetworkServiceEndpoint
) -> None:
    expected = all(endpoint_matches(part, entry) for part in _one_field_queries(query))
    assert endpoint_matches(query, entry) is expected


@given(endpoints)
def test_an_endpoint_matches_itself_as_a_query(entry: NetworkServiceEndpoint) -> None:
    assert endpoint_matches(entry, entry)


match_lists = st.lists(
    st.builds(
        Match,
        source_selector=label_sets,
        routes=st.lists(st.builds(Destination, destination_selector=label_sets), max_size=2),
        fallthrough=st.booleans(),
    ),
    max_size=2,
)
services = st.builds(
    NetworkService,
    name=st.sampled_from(("", "vpn", "dns")),
    payload=st.sampled_from(("", "IP", "ETHERNET")),
    matches=match_lists,
)


@given(services, services, services)
def test_adding_a_field_to_a_service_query_never_widens_it(
    query: NetworkService, extra: NetworkService, entry: NetworkService
) -> None:
    narrowed = NetworkService(
        name=query.name or extra.name,
        payload=query.payload or extra.payload,
        matches=query.matches or extra.matches,
    )
    if service_matches(narrowed, entry):
        assert service_matches(query, entry)


@given(services, st.booleans(), st.booleans(), st.booleans())
def test_a_service_matches_any_query_built_from_its_own_fields(
    entry: NetworkService, name: bool, payload: bool, matches: bool
) -> None:
    query = NetworkService(
        name=entry.name if name else "",
        payload=entry.payload if payload else "",
        matches=list(entry.matches) if matches else [],
    )
    assert service_matches(query, entry)
