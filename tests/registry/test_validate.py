"""What a registration must satisfy: every rejection is InvalidArgument naming the field.

Each case starts from a good message, breaks one thing, and checks that ``exc.reason`` starts with
the field's path, that ``exc.hop`` is the registry's name and ``exc.service`` the service the
registration is about.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest

from trionsm.actors.registry import check_endpoint, check_service
from trionsm.actors.registry._validate import (
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_MATCHES,
    MAX_NAME,
    MAX_SERVICES,
)
from trionsm.api.registry import (
    Destination,
    Match,
    Metadata,
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceLabels,
)
from trionsm.errors import InvalidArgument

NOW = datetime.datetime(2030, 6, 1, 12, 0, 0, tzinfo=datetime.UTC)
HOP = "registry@node-1"
NSE = "network_service_endpoint"
NS = "network_service"


def good_endpoint() -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name="nse-1",
        network_service_names=["vpn", "dns"],
        network_service_labels={"vpn": NetworkServiceLabels(labels={"app": "vpn-gw"})},
        url="tcp://127.0.0.1:5002",
        expiration_time=NOW + datetime.timedelta(seconds=60),
    )


def good_service() -> NetworkService:
    return NetworkService(
        name="vpn",
        payload="ETHERNET",
        matches=[
            Match(
                source_selector={"app": "client"},
                routes=[Destination(destination_selector={"app": "vpn-gw"}, weight=1)],
                metadata=Metadata(labels={"forwarder": "vpp"}),
            )
        ],
    )


def _many(count: int, size: int = 1) -> dict[str, str]:
    return {f"k{index}": "v" * size for index in range(count)}


def _labels(labels: dict[str, str]) -> dict[str, NetworkServiceLabels]:
    return {"vpn": NetworkServiceLabels(labels=labels)}


# -- endpoints ------------------------------------------------------------------------------------


def test_a_good_endpoint_passes() -> None:
    check_endpoint(good_endpoint(), now=NOW, hop=HOP)
    check_endpoint(good_endpoint(), now=NOW)


def test_an_endpoint_without_optional_fields_passes() -> None:
    minimal = NetworkServiceEndpoint(
        name="n", network_service_names=["s"], url="tcp://127.0.0.1:5002"
    )
    check_endpoint(minimal, now=NOW)


@pytest.mark.parametrize(
    "url",
    [
        "tcp://127.0.0.1:5002",
        "unix:///var/lib/networkservicemesh/nsm.io.sock",
        "inode://4/4026532565",
        "tcp://[::1]:5002",
        "tcp://nse.example.com:5002",
        "zmq+tcp://10.0.0.1:6000",
        "inproc://nse-1",
    ],
)
def test_endpoint_urls_in_nsm_forms_pass(url: str) -> None:
    nse = good_endpoint()
    nse.url = url
    check_endpoint(nse, now=NOW)


def test_endpoint_limits_are_inclusive() -> None:
    nse = good_endpoint()
    nse.name = "n" * MAX_NAME
    nse.network_service_names = [f"s{index}" for index in range(MAX_SERVICES)]
    nse.network_service_labels = {
        f"s{index}": NetworkServiceLabels(labels={}) for index in range(MAX_SERVICES)
    }
    nse.network_service_labels["s0"] = NetworkServiceLabels(
        labels={**_many(MAX_LABELS - 1), "k" * MAX_LABEL_KEY: "v" * MAX_LABEL_VALUE}
    )
    nse.expiration_time = NOW + datetime.timedelta(microseconds=1)
    check_endpoint(nse, now=NOW)


def _set(**fields: object) -> Callable[[NetworkServiceEndpoint], None]:
    def change(nse: NetworkServiceEndpoint) -> None:
        for name, value in fields.items():
            setattr(nse, name, value)

    return change


# (id, change to a good endpoint, field the reason starts with, expected exc.service)
ENDPOINT_CASES: list[tuple[str, Callable[[NetworkServiceEndpoint], None], str, str | None]] = [
    ("empty name", _set(name=""), f"{NSE}.name", "vpn"),
    ("space in name", _set(name="nse 1"), f"{NSE}.name", "vpn"),
    ("tab in name", _set(name="nse\t1"), f"{NSE}.name", "vpn"),
    ("slash in name", _set(name="ns/nse-1"), f"{NSE}.name", "vpn"),
    ("NUL in name", _set(name="nse\x001"), f"{NSE}.name", "vpn"),
    ("DEL in name", _set(name="nse\x7f"), f"{NSE}.name", "vpn"),
    ("newline in name", _set(name="nse-1\n"), f"{NSE}.name", "vpn"),
    ("name too long", _set(name="n" * (MAX_NAME + 1)), f"{NSE}.name", "vpn"),
    ("empty url", _set(url=""), f"{NSE}.url", "vpn"),
    ("url without scheme", _set(url="127.0.0.1:5002"), f"{NSE}.url", "vpn"),
    ("url of unknown scheme", _set(url="http://127.0.0.1:5002"), f"{NSE}.url", "vpn"),
    ("tcp url without port", _set(url="tcp://127.0.0.1"), f"{NSE}.url", "vpn"),
    ("tcp url port out of range", _set(url="tcp://127.0.0.1:70000"), f"{NSE}.url", "vpn"),
    ("unix url relative", _set(url="unix://var/nsm.sock"), f"{NSE}.url", "vpn"),
    ("inode url malformed", _set(url="inode://4"), f"{NSE}.url", "vpn"),
    ("url with space", _set(url="tcp://127.0.0.1:5002 "), f"{NSE}.url", "vpn"),
    ("no service names", _set(network_service_names=[]), f"{NSE}.network_service_names", None),
    (
        "duplicate service name",
        _set(network_service_names=["vpn", "dns", "vpn"]),
        f"{NSE}.network_service_names[2]",
        "vpn",
    ),
    (
        "empty service name",
        _set(network_service_names=["vpn", ""]),
        f"{NSE}.network_service_names[1]",
        None,
    ),
    (
        "bad service name",
        _set(network_service_names=["vpn", "d n s"]),
        f"{NSE}.network_service_names[1]",
        "d n s",
    ),
    (
        "too many services",
        _set(network_service_names=[f"s{index}" for index in range(MAX_SERVICES + 1)]),
        f"{NSE}.network_service_names",
        "s0",
    ),
    (
        "too many label sets",
        _set(
            network_service_labels={
                f"s{index}": NetworkServiceLabels(labels={}) for index in range(MAX_SERVICES + 1)
            }
        ),
        f"{NSE}.network_service_labels",
        "vpn",
    ),
    (
        "too many labels",
        _set(network_service_labels=_labels(_many(MAX_LABELS + 1))),
        f"{NSE}.network_service_labels['vpn']",
        "vpn",
    ),
    (
        "empty label key",
        _set(network_service_labels=_labels({"": "x"})),
        f"{NSE}.network_service_labels['vpn']",
        "vpn",
    ),
    (
        "label key too long",
        _set(network_service_labels=_labels({"k" * (MAX_LABEL_KEY + 1): "x"})),
        f"{NSE}.network_service_labels['vpn']",
        "vpn",
    ),
    (
        "label value too long",
        _set(network_service_labels=_labels({"app": "v" * (MAX_LABEL_VALUE + 1)})),
        f"{NSE}.network_service_labels['vpn']['app']",
        "vpn",
    ),
    (
        "label set of another service",
        _set(
            network_service_labels={"dns": NetworkServiceLabels(labels={"": "x"})},
        ),
        f"{NSE}.network_service_labels['dns']",
        "dns",
    ),
    (
        "expiration in the past",
        _set(expiration_time=NOW - datetime.timedelta(seconds=1)),
        f"{NSE}.expiration_time",
        "vpn",
    ),
    ("expiration equal to now", _set(expiration_time=NOW), f"{NSE}.expiration_time", "vpn"),
    (
        "expiration a microsecond ago",
        _set(expiration_time=NOW - datetime.timedelta(microseconds=1)),
        f"{NSE}.expiration_time",
        "vpn",
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "service"),
    [
        pytest.param(change, field, service, id=name)
        for name, change, field, service in ENDPOINT_CASES
    ],
)
def test_a_bad_endpoint_is_rejected_naming_the_field(
    change: Callable[[NetworkServiceEndpoint], None], field: str, service: str | None
) -> None:
    nse = good_endpoint()
    change(nse)
    with pytest.raises(InvalidArgument) as caught:
        check_endpoint(nse, now=NOW, hop=HOP)
    error = caught.value
    assert error.reason.startswith(f"{field}: "), error.reason
    assert error.hop == HOP
    assert (error.service or None) == service
    assert str(error).startswith(f"[{HOP}] ")


def test_an_endpoint_error_quotes_the_offending_value() -> None:
    nse = good_endpoint()
    nse.url = "http://127.0.0.1:5002"
    with pytest.raises(InvalidArgument, match=r"http://127\.0\.0\.1:5002"):
        check_endpoint(nse, now=NOW)
    nse = good_endpoint()
    nse.name = "nse/1"
    with pytest.raises(InvalidArgument, match=r"'/' at index 3"):
        check_endpoint(nse, now=NOW)


def test_the_default_hop_is_registry() -> None:
    nse = good_endpoint()
    nse.url = ""
    with pytest.raises(InvalidArgument) as caught:
        check_endpoint(nse, now=NOW)
    assert caught.value.hop == "registry"
    with pytest.raises(InvalidArgument) as caught_ns:
        check_service(NetworkService(), hop="registry")
    assert caught_ns.value.hop == "registry"


def test_the_first_bad_field_is_reported() -> None:
    nse = NetworkServiceEndpoint(name="", url="", expiration_time=NOW)
    with pytest.raises(InvalidArgument) as caught:
        check_endpoint(nse, now=NOW)
    assert caught.value.reason.startswith(f"{NSE}.name: ")


def test_a_naive_expiration_time_is_taken_as_utc() -> None:
    nse = good_endpoint()
    nse.expiration_time = NOW.replace(tzinfo=None) + datetime.timedelta(seconds=1)
    check_endpoint(nse, now=NOW)
    nse.expiration_time = NOW.replace(tzinfo=None)
    with pytest.raises(InvalidArgument) as caught:
        check_endpoint(nse, now=NOW)
    assert caught.value.reason.startswith(f"{NSE}.expiration_time: ")


# -- services -------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["", "IP", "ETHERNET"])
def test_a_good_service_passes(payload: str) -> None:
    ns = good_service()
    ns.payload = payload
    check_service(ns, hop=HOP)
    check_service(NetworkService(name="vpn"))


def test_service_limits_are_inclusive() -> None:
    selector = {**_many(MAX_LABELS - 1), "k" * MAX_LABEL_KEY: "v" * MAX_LABEL_VALUE}
    match = Match(
        source_selector=selector,
        routes=[Destination(destination_selector=selector)] * MAX_LABELS,
        metadata=Metadata(labels=selector),
    )
    check_service(NetworkService(name="n" * MAX_NAME, matches=[match] * MAX_MATCHES))


def _match(**fields: object) -> NetworkService:
    return NetworkService(name="vpn", matches=[Match(), Match(**fields)])  # type: ignore[arg-type]


M1 = f"{NS}.matches[1]"
SERVICE_CASES: list[tuple[str, NetworkService, str, str | None]] = [
    ("empty name", NetworkService(name=""), f"{NS}.name", None),
    ("space in name", NetworkService(name="v pn"), f"{NS}.name", "v pn"),
    ("slash in name", NetworkService(name="a/vpn"), f"{NS}.name", "a/vpn"),
    ("control char in name", NetworkService(name="vpn\x1b"), f"{NS}.name", "vpn\x1b"),
    (
        "name too long",
        NetworkService(name="n" * (MAX_NAME + 1)),
        f"{NS}.name",
        "n" * (MAX_NAME + 1),
    ),
    ("unknown payload", NetworkService(name="vpn", payload="TCP"), f"{NS}.payload", "vpn"),
    ("lowercase payload", NetworkService(name="vpn", payload="ip"), f"{NS}.payload", "vpn"),
    (
        "too many matches",
        NetworkService(name="vpn", matches=[Match()] * (MAX_MATCHES + 1)),
        f"{NS}.matches",
        "vpn",
    ),
    (
        "oversized source selector",
        _match(source_selector=_many(MAX_LABELS + 1)),
        f"{M1}.source_selector",
        "vpn",
    ),
    (
        "long source selector key",
        _match(source_selector={"k" * (MAX_LABEL_KEY + 1): "v"}),
        f"{M1}.source_selector",
        "vpn",
    ),
    (
        "long source selector value",
        _match(source_selector={"app": "v" * (MAX_LABEL_VALUE + 1)}),
        f"{M1}.source_selector['app']",
        "vpn",
    ),
    (
        "too many routes",
        _match(routes=[Destination()] * (MAX_LABELS + 1)),
        f"{M1}.routes",
        "vpn",
    ),
    (
        "oversized destination selector",
        _match(routes=[Destination(), Destination(destination_selector=_many(MAX_LABELS + 1))]),
        f"{M1}.routes[1].destination_selector",
        "vpn",
    ),
    (
        "empty destination selector key",
        _match(routes=[Destination(destination_selector={"": "x"})]),
        f"{M1}.routes[0].destination_selector",
        "vpn",
    ),
    (
        "oversized metadata labels",
        _match(metadata=Metadata(labels=_many(MAX_LABELS + 1))),
        f"{M1}.metadata.labels",
        "vpn",
    ),
    (
        "long metadata label value",
        _match(metadata=Metadata(labels={"forwarder": "v" * (MAX_LABEL_VALUE + 1)})),
        f"{M1}.metadata.labels['forwarder']",
        "vpn",
    ),
]


@pytest.mark.parametrize(
    ("ns", "field", "service"),
    [pytest.param(ns, field, service, id=name) for name, ns, field, service in SERVICE_CASES],
)
def test_a_bad_service_is_rejected_naming_the_field(
    ns: NetworkService, field: str, service: str | None
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_service(ns, hop=HOP)
    error = caught.value
    assert error.reason.startswith(f"{field}: "), error.reason
    assert error.hop == HOP
    assert error.service == service
