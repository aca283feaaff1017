"""The network service URL: NSM's nsurl cases, our stricter errors, and format/parse round trips."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionsm.actors._mechanisms import KERNEL, LOCAL, LOCAL_TYPES, Param
from trionsm.actors._nsurl import NsUrl, parse_nsurl
from trionsm.api.connection import Mechanism
from trionsm.errors import InvalidArgument


@pytest.mark.parametrize(
    ("url", "mechanism", "service", "interface", "labels"),
    [
        # NSM's Test_NSURL samples
        ("vfio://my-service/nsm-1", "VFIO", "my-service", "nsm-1", {}),
        ("vfio://second-service?sriovToken=intel/10G", "VFIO", "second-service", None,
         {"sriovToken": "intel/10G"}),
        ("memif://my-vpp-service?A=1&B=2&C=3", "MEMIF", "my-vpp-service", None,
         {"A": "1", "B": "2", "C": "3"}),
        ("kernel://my-service@dc.example.com/ms1", "KERNEL", "my-service@dc.example.com", "ms1",
         {}),
        # the reference examples
        ("kernel://icmp-responder/nsm-1?app=foo", "KERNEL", "icmp-responder", "nsm-1",
         {"app": "foo"}),
        ("kernel://icmp-responder@my.cluster2/nsm-1", "KERNEL", "icmp-responder@my.cluster2",
         "nsm-1", {}),
        # case, trailing slash, empty query, decoding, repeated keys, empty pieces
        ("KERNEL://svc", "KERNEL", "svc", None, {}),
        ("Noop://svc/", "NOOP", "svc", None, {}),
        ("kernel://svc?", "KERNEL", "svc", None, {}),
        ("kernel://svc/nsm%2D1?a=x+y&b=%C3%A9&c=", "KERNEL", "svc", "nsm-1",
         {"a": "x y", "b": "é", "c": ""}),
        ("kernel://svc?color=red&color=blue&&size=1", "KERNEL", "svc", None,
         {"color": "red,blue", "size": "1"}),
        ("kernel://a_b.c~d-e/eth0?x=1=2", "KERNEL", "a_b.c~d-e", "eth0", {"x": "1=2"}),
        ("kernel://svc/123456789012345", "KERNEL", "svc", "123456789012345", {}),
    ],
)  # fmt: skip
def test_parse(
    url: str, mechanism: str, service: str, interface: str | None, labels: dict[str, str]
) -> None:
    parsed = parse_nsurl(url)
    assert parsed == NsUrl(mechanism, service, interface, labels)
    assert parsed.labels == labels
    assert parse_nsurl(parsed.format()) == parsed


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("icmp-responder", "no mechanism"),
        ("", "no mechanism"),
        ("/icmp-responder", "no mechanism"),
        ("kernel:icmp-responder", "expected 'kernel://'"),
        ("kernel:/icmp-responder", "expected 'kernel://'"),
        ("9p://svc", "no mechanism"),
        ("foo://svc", "unknown mechanism 'foo'"),
        ("vxlan://svc", "vxlan is a REMOTE mechanism"),
        ("wireguard://svc", "kernel, memif, vfio, noop"),
        ("kernel://", "empty network service"),
        ("kernel:///nsm-1", "empty network service"),
        ("kernel://?app=x", "empty network service"),
        ("kernel://@my.cluster2/nsm-1", "empty network service"),
        ("kernel://svc@/nsm-1", "empty domain after '@'"),
        ("kernel://svc:5000/nsm-1", "ports have no meaning"),
        ("kernel://user:pw@svc", "password"),
        ("kernel://a@b@c", "'@' in the domain"),
        ("kernel://svc%41", "'%' in the network service"),
        ("kernel://[::1]", "'[' in the network service"),
        ("kernel://svc/1234567890123456", "16 bytes long; Linux allows at most 15"),
        ("kernel://svc/a/b", "one interface name"),
        ("kernel://svc/nsm%3A1", "contains ':'"),
        ("kernel://svc/..", "'.' or '..'"),
        ("kernel://svc/%zz", "bad percent-escape '%zz'"),
        ("kernel://svc/%ff", "does not decode to UTF-8"),
        ("kernel://svc?app", "label 'app' has no '=value'"),
        ("kernel://svc?=foo", "empty key"),
        ("kernel://svc?a=1;b=2", "';' between labels"),
        ("kernel://svc?a=%g1", "bad percent-escape '%g1' in label 'a'"),
        ("kernel://svc?a=%0A", "control characters"),
        ("kernel://svc#frag", "fragments"),
        ("kernel://svc/nsm 1", "whitespace"),
        ("kernel://svc\n", "whitespace"),
        ("kernel://" + "s" * 5000, "at most 4096"),
    ],
)
def test_errors_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_nsurl(url)
    assert problem in caught.value.reason
    assert caught.value.reason.startswith("network service URL ")


def test_error_quotes_the_url_and_names_the_service() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_nsurl("kernel://icmp-responder/much-too-long-name")
    assert "'kernel://icmp-responder/much-too-long-name'" in caught.value.reason
    assert caught.value.service == "icmp-responder"


def test_to_mechanism() -> None:
    assert parse_nsurl("kernel://svc/nsm-1").to_mechanism() == Mechanism(
        cls=LOCAL, type=KERNEL, parameters={Param.NAME: "nsm-1"}
    )
    assert parse_nsurl("memif://svc").to_mechanism() == Mechanism(cls=LOCAL, type="MEMIF")


def test_format_is_canonical() -> None:
    url = parse_nsurl("KERNEL://svc@dom/eth0?b=2&a=x+y&c=%2F")
    assert url.format() == "kernel://svc@dom/eth0?a=x+y&b=2&c=%2F"
    assert str(url) == url.format()
    assert NsUrl("NOOP", "svc").format() == "noop://svc"


def test_constructor_checks_and_copies() -> None:
    labels = {"app": "x"}
    url = NsUrl("KERNEL", "svc", None, labels)
    labels["app"] = "changed"
    assert url.labels == {"app": "x"}
    assert hash(url) == hash(NsUrl("KERNEL", "svc", None, {"other": "labels"}))
    for bad in [
        lambda: NsUrl("kernel", "svc"),
        lambda: NsUrl("VXLAN", "svc"),
        lambda: NsUrl("KERNEL", "bad name"),
        lambda: NsUrl("KERNEL", "svc", "x" * 16),
        lambda: NsUrl("KERNEL", "svc", ""),
        lambda: NsUrl("KERNEL", "svc", None, {"": "v"}),
    ]:
        with pytest.raises(InvalidArgument):
            bad()


NAME = st.text(string.ascii_letters + string.digits + "-._~", min_size=1, max_size=30)
SERVICE = st.one_of(NAME, st.builds(lambda n, d: f"{n}@{d}", NAME, NAME))
INTERFACE = st.text(
    st.characters(blacklist_characters="/:", blacklist_categories=["Cc", "Cs", "Zs", "Zl", "Zp"]),
    min_size=1,
    max_size=15,
).filter(lambda name: len(name.encode()) <= 15 and name not in {".", ".."} and name.isprintable())
LABEL_TEXT = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=20).filter(
    str.isprintable
)


@given(
    st.sampled_from(LOCAL_TYPES),
    SERVICE,
    st.none() | INTERFACE,
    st.dictionaries(LABEL_TEXT.filter(bool), LABEL_TEXT, max_size=5),
)
def test_format_parse_round_trip(
    mechanism: str, service: str, interface: str | None, labels: dict[str, str]
) -> None:
    url = NsUrl(mechanism, service, interface, labels)
    assert parse_nsurl(url.format()) == url


URLISH = st.from_regex(r"(kernel|memif|noop|vxlan|x)://[\w@:/?&=%+#;.\[\]-]{0,30}", fullmatch=True)


@given(st.text(max_size=60) | URLISH)
def test_parse_raises_only_invalid_argument(text: str) -> None:
    try:
        url = parse_nsurl(text)
    except InvalidArgument:
        return
    assert parse_nsurl(url.format()) == url
