"""Selection: selector templates, IsSubset, MatchEndpoint, forwarder matching, round robin, and
errors that say why nothing was selected.

The match cases follow NSM's own (``discover/server_test.go``: the secure-intranet-connectivity
service with firewall / some-middle-app / vpn-gateway endpoints; ``Test_ShouldParseNetwork
ServiceLabelsTemplate``; the sandbox's ``linearNS``; the scale-from-zero example), written anew.
"""

from __future__ import annotations

import copy
import datetime
import string
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionsm.actors._select import (
    DEFAULT_FORWARDER_LABELS,
    FORWARDER_SERVICE,
    RoundRobin,
    all_failed_error,
    drop_expired,
    is_subset,
    match_endpoints,
    match_forwarders,
    no_endpoint_error,
    no_forwarder_error,
    prefer_named,
    render,
    select_endpoints,
    select_forwarders,
)
from trionsm.api.registry import (
    Destination,
    Match,
    Metadata,
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceLabels,
)
from trionsm.errors import FailedPrecondition, NotFound, Unavailable

SECURE = "secure-intranet-connectivity"


def nse(name: str, service: str = SECURE, **labels: str) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name=name,
        network_service_names=[service],
        network_service_labels={service: NetworkServiceLabels(labels=dict(labels))},
        url=f"tcp://{name}.example:5001",
    )


def match(
    source: Mapping[str, str] | None = None,
    *routes: Mapping[str, str],
    fallthrough: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Match:
    return Match(
        source_selector=dict(source or {}),
        routes=[Destination(destination_selector=dict(route)) for route in routes],
        fallthrough=fallthrough,
        metadata=Metadata(labels=dict(metadata)) if metadata is not None else None,
    )


def names(endpoints: list[NetworkServiceEndpoint] | None) -> list[str] | None:
    return None if endpoints is None else [endpoint.name for endpoint in endpoints]


# NSM's discover test fixtures: three endpoints, three matches.
FIREWALL, MIDDLE, VPN = (
    nse("fw", app="firewall"),
    nse("mid", app="some-middle-app"),
    nse("vpn", app="vpn-gateway"),
)
ENDPOINTS = [FIREWALL, MIDDLE, VPN]
FROM_ANYWHERE = match({}, {"app": "firewall"})
FROM_FIREWALL = match({"app": "firewall"}, {"app": "some-middle-app"})
FROM_MIDDLE = match({"app": "some-middle-app"}, {"app": "vpn-gateway"})


def secure(*matches: Match) -> NetworkService:
    return NetworkService(name=SECURE, payload="IP", matches=list(matches))


# -- render ---------------------------------------------------------------------------------------

LABELS = {"nodeName": "node-1", "app": "icmp", "podName": "nsc-7"}


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{{.nodeName}}", "node-1"),
        ("{{ .nodeName }}", "node-1"),
        ("{{\t.nodeName\n}}", "node-1"),
        ('{{index .Labels "nodeName"}}', "node-1"),
        ('{{ index  .Labels  "nodeName" }}', "node-1"),
        ('{{index . "app"}}', "icmp"),
        ("{{index .Labels `podName`}}", "nsc-7"),
        ("{{.app}}-on-{{.nodeName}}", "icmp-on-node-1"),
        ("pre {{.app}} post", "pre icmp post"),
        ("{{.app}}{{.app}}", "icmpicmp"),
        ("a {{- .app -}} b", "aicmpb"),
        ("a {{- .app }} b", "aicmp b"),
        # a missing key, as Go prints it: <no value> for a field, "" for index
        ("{{.zone}}", "<no value>"),
        ('{{index .Labels "zone"}}', ""),
        ('{{index .Labels "a}}b"}}', ""),
        # not a template at all, or one Go would reject or we do not run: literal
        ("node-1", "node-1"),
        ("", ""),
        ("}}{{", "}}{{"),
        ("{{.nodeName", "{{.nodeName"),
        ("{{}}", "{{}}"),
        ("{{.a.b}}", "{{.a.b}}"),
        ("{{.node-name}}", "{{.node-name}}"),
        ('{{printf "%s" .app}}', '{{printf "%s" .app}}'),
        ("{{if .app}}x{{end}}", "{{if .app}}x{{end}}"),
        ('{{index .Labels "x" "y"}}', '{{index .Labels "x" "y"}}'),
        ('{{index .Labels "\\q"}}', '{{index .Labels "\\q"}}'),
        ("ok {{.app}} then {{broken", "ok {{.app}} then {{broken"),
    ],
)
def test_render(template: str, rendered: str) -> None:
    assert render(template, LABELS) == rendered


def test_render_with_no_labels() -> None:
    assert render("{{.nodeName}}", {}) == "<no value>"
    assert render('{{index .Labels "nodeName"}}', {}) == ""


KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
PLAIN = st.text(st.characters(blacklist_characters="{}"), max_size=30)


@given(st.text(max_size=40), st.dictionaries(PLAIN, PLAIN, max_size=4))
def test_render_without_braces_is_identity(value: str, labels: dict[str, str]) -> None:
    plain = value.replace("{{", "{")
    assert render(plain, labels) == plain


@given(KEYS, PLAIN, PLAIN, PLAIN)
def test_render_substitutes_the_label(key: str, value: str, before: str, after: str) -> None:
    template = f"{before}{{{{.{key}}}}}{after}"
    assert render(template, {key: value}) == f"{before}{value}{after}"
    assert render(f'{{{{index .Labels "{key}"}}}}', {key: value}) == value


# -- is_subset ------------------------------------------------------------------------------------


def test_is_subset_literal_and_templated() -> None:
    labels = {"app": "nse", "nodeName": "node-1"}
    assert is_subset({}, labels, LABELS)
    assert is_subset({"app": "nse"}, labels, LABELS)
    assert not is_subset({"app": "other"}, labels, LABELS)
    assert is_subset({"nodeName": "{{.nodeName}}"}, labels, LABELS)
    assert not is_subset({"nodeName": "{{.nodeName}}"}, labels, {"nodeName": "node-2"})
    # a label literally equal to the template fits too (literal comparison comes first)
    assert is_subset({"t": "{{.x}}"}, {"t": "{{.x}}"}, {})


def test_is_subset_keeps_go_map_semantics() -> None:
    # more selector entries than labels never fit, even when every entry would
    assert not is_subset({"a": "", "b": ""}, {"a": ""}, {})
    # an absent label reads as "": an empty selector value fits it when the sizes allow
    assert is_subset({"zone": ""}, {"app": "x"}, {})
    assert not is_subset({"zone": "{{.zone}}"}, {"app": "x"}, {})  # renders "<no value>"
    assert is_subset({"zone": '{{index . "zone"}}'}, {"app": "x"}, {})  # renders ""


LABEL_MAPS = st.dictionaries(KEYS, st.text(string.ascii_letters, min_size=1, max_size=8))


@given(LABEL_MAPS, LABEL_MAPS)
def test_is_subset_without_templates_is_plain_subset(
    selector: dict[str, str], labels: dict[str, str]
) -> None:
    assert is_subset(selector, labels, {}) == (selector.items() <= labels.items())
    assert is_subset(selector, {**labels, **selector}, {})


# -- match_endpoints ------------------------------------------------------------------------------


def test_no_matches_means_every_endpoint() -> None:
    assert names(match_endpoints({"app": "x"}, secure(), ENDPOINTS)) == ["fw", "mid", "vpn"]


def test_empty_source_selector_matches_unlabelled_client() -> None:
    ns = secure(FROM_FIREWALL, FROM_MIDDLE, FROM_ANYWHERE)
    assert names(match_endpoints({}, ns, ENDPOINTS)) == ["fw"]


def test_non_empty_source_selector() -> None:
    ns = secure(FROM_FIREWALL, FROM_MIDDLE, FROM_ANYWHERE)
    assert names(match_endpoints({"app": "firewall"}, ns, ENDPOINTS)) == ["mid"]
    assert names(match_endpoints({"app": "some-middle-app"}, ns, ENDPOINTS)) == ["vpn"]


def test_empty_source_selector_going_first_wins() -> None:
    ns = secure(FROM_ANYWHERE, FROM_FIREWALL, FROM_MIDDLE)
    assert names(match_endpoints({"app": "firewall"}, ns, ENDPOINTS)) == ["fw"]


def test_no_applicable_match_is_none() -> None:
    ns = secure(FROM_FIREWALL, FROM_MIDDLE)
    assert match_endpoints({"app": "unknown-app"}, ns, ENDPOINTS) is None


def test_applicable_match_without_candidates_is_empty_not_none() -> None:
    ns = secure(match({}, {"app": "nothing-like-this"}), FROM_ANYWHERE)
    assert match_endpoints({}, ns, ENDPOINTS) == []


def test_routes_concatenate_in_order_with_duplicates() -> None:
    ns = secure(match({}, {"app": "vpn-gateway"}, {}, {"app": "firewall"}))
    assert names(match_endpoints({}, ns, ENDPOINTS)) == ["vpn", "fw", "mid", "vpn", "fw"]


def test_fallthrough_only_when_empty() -> None:
    first = match({}, {"app": "missing"}, fallthrough=True)
    assert names(match_endpoints({}, secure(first, FROM_ANYWHERE), ENDPOINTS)) == ["fw"]
    found = match({}, {"app": "vpn-gateway"}, fallthrough=True)
    assert names(match_endpoints({}, secure(found, FROM_ANYWHERE), ENDPOINTS)) == ["vpn"]
    assert match_endpoints({}, secure(first), ENDPOINTS) is None


def test_metadata_without_routes_means_every_endpoint() -> None:
    forwarder_only = match({}, metadata={"p2p": "true"})
    assert names(match_endpoints({}, secure(forwarder_only), ENDPOINTS)) == ["fw", "mid", "vpn"]
    assert match_endpoints({}, secure(match({})), ENDPOINTS) == []


def test_labels_of_this_service_only() -> None:
    other = nse("other", "another-service", app="firewall")
    unlabelled = NetworkServiceEndpoint(name="bare", network_service_names=[SECURE])
    ns = secure(FROM_ANYWHERE)
    assert names(match_endpoints({}, ns, [other, unlabelled, FIREWALL])) == ["fw"]
    assert names(match_endpoints({}, secure(match({}, {})), [unlabelled])) == ["bare"]


def test_templated_destination_selects_same_node() -> None:
    # Test_ShouldParseNetworkServiceLabelsTemplate: nodeName: "{{.nodeName}}"
    ns = NetworkService(name="tmpl", matches=[match({}, {"nodeName": "{{.nodeName}}"})])
    here, there = nse("here", "tmpl", nodeName="testValue"), nse("there", "tmpl", nodeName="x")
    assert names(match_endpoints({"nodeName": "testValue"}, ns, [there, here])) == ["here"]
    assert match_endpoints({}, ns, [there, here]) == []


def test_templated_source_selector() -> None:
    ns = NetworkService(
        name="svc",
        matches=[
            match({"home": "{{.nodeName}}"}, {"tier": "local"}),
            match({}, {"tier": "any"}),
        ],
    )
    local, anywhere = nse("l", "svc", tier="local"), nse("a", "svc", tier="any")
    assert names(match_endpoints({"home": "n1", "nodeName": "n1"}, ns, [local, anywhere])) == ["l"]
    assert names(match_endpoints({"home": "n1", "nodeName": "n2"}, ns, [local, anywhere])) == ["a"]


def scale_from_zero() -> NetworkService:
    return NetworkService(
        name="scale-from-zero",
        payload="ETHERNET",
        matches=[
            match({}, {"app": "nse-icmp-responder", "nodeName": "{{.nodeName}}"}, fallthrough=True),
            match({}, {"app": "icmp-responder-supplier"}),
        ],
    )


def test_scale_from_zero() -> None:
    ns = scale_from_zero()
    supplier = nse("supplier", ns.name, app="icmp-responder-supplier")
    spawned = nse("nse-node-1", ns.name, app="nse-icmp-responder", nodeName="node-1")
    # nothing runs yet: the supplier is chosen (and will create the endpoint)
    assert names(match_endpoints({"nodeName": "node-1"}, ns, [supplier])) == ["supplier"]
    # once the endpoint on node-1 registered, node-1's clients get it...
    both = [supplier, spawned]
    assert names(match_endpoints({"nodeName": "node-1"}, ns, both)) == ["nse-node-1"]
    # ...and node-2's clients still fall through to the supplier
    assert names(match_endpoints({"nodeName": "node-2"}, ns, both)) == ["supplier"]


def linear_ns(hops: int) -> NetworkService:
    """The sandbox's linearNS: step i-1 goes to step i, a client without a step to step 0."""
    matches = [match({"step": str(i - 1)}, {"step": str(i)}) for i in range(1, hops)]
    return NetworkService(name="linear", matches=[*matches, match({}, {"step": "0"})])


def test_linear_composition() -> None:
    ns = linear_ns(4)
    steps = [nse(f"pass-{i}", "linear", step=str(i)) for i in (3, 1, 0, 2)]
    assert names(match_endpoints({}, ns, steps)) == ["pass-0"]
    assert names(match_endpoints({"step": "0"}, ns, steps)) == ["pass-1"]
    assert names(match_endpoints({"step": "1", "podName": "p"}, ns, steps)) == ["pass-2"]
    assert names(match_endpoints({"step": "2"}, ns, steps)) == ["pass-3"]


def test_inputs_are_not_mutated() -> None:
    ns = scale_from_zero()
    endpoints = [nse("a", ns.name, app="nse-icmp-responder", nodeName="n")]
    labels = {"nodeName": "n"}
    before = copy.deepcopy((ns, endpoints, labels))
    match_endpoints(labels, ns, endpoints)
    match_forwarders(labels, ns, endpoints)
    assert (ns, endpoints, labels) == before


# -- match_forwarders -----------------------------------------------------------------------------


def forwarder(name: str, **labels: str) -> NetworkServiceEndpoint:
    return nse(name, FORWARDER_SERVICE, **labels)


P2P, KERNEL_ONLY, BARE = (
    forwarder("fwd-p2p", p2p="true"),
    forwarder("fwd-special", p2p="false", kind="special"),
    NetworkServiceEndpoint(name="fwd-bare", network_service_names=[FORWARDER_SERVICE]),
)
FORWARDERS = [P2P, KERNEL_ONLY, BARE]


def test_forwarders_without_matches_or_service() -> None:
    assert names(match_forwarders({}, None, FORWARDERS)) == ["fwd-p2p", "fwd-special", "fwd-bare"]
    assert names(match_forwarders({}, secure(), FORWARDERS)) == [
        "fwd-p2p",
        "fwd-special",
        "fwd-bare",
    ]


def test_forwarders_default_to_p2p() -> None:
    assert DEFAULT_FORWARDER_LABELS == {"p2p": "true"}
    assert names(match_forwarders({}, secure(FROM_ANYWHERE), FORWARDERS)) == ["fwd-p2p"]
    empty_metadata = match({}, {"app": "firewall"}, metadata={})
    assert names(match_forwarders({}, secure(empty_metadata), FORWARDERS)) == ["fwd-p2p"]


def test_forwarders_by_metadata_labels() -> None:
    ns = secure(match({}, metadata={"kind": "special"}))
    assert names(match_forwarders({}, ns, FORWARDERS)) == ["fwd-special"]
    templated = secure(match({}, metadata={"kind": "{{.want}}"}))
    assert names(match_forwarders({"want": "special"}, templated, FORWARDERS)) == ["fwd-special"]


def test_forwarders_fallthrough_and_no_applicable_match() -> None:
    missing = match({}, metadata={"kind": "gpu"}, fallthrough=True)
    assert names(match_forwarders({}, secure(missing, FROM_ANYWHERE), FORWARDERS)) == ["fwd-p2p"]
    assert match_forwarders({}, secure(missing), FORWARDERS) == []
    assert match_forwarders({}, secure(FROM_FIREWALL), FORWARDERS) == []
    no_fallthrough = match({}, metadata={"kind": "gpu"})
    assert match_forwarders({}, secure(no_fallthrough, FROM_ANYWHERE), FORWARDERS) == []


# -- helpers --------------------------------------------------------------------------------------


def test_prefer_named() -> None:
    assert names(prefer_named(FORWARDERS, "fwd-bare")) == ["fwd-bare", "fwd-p2p", "fwd-special"]
    assert names(prefer_named(FORWARDERS, "fwd-p2p")) == ["fwd-p2p", "fwd-special", "fwd-bare"]
    assert names(prefer_named(FORWARDERS, "gone")) == ["fwd-p2p", "fwd-special", "fwd-bare"]
    assert names(prefer_named(FORWARDERS, None)) == ["fwd-p2p", "fwd-special", "fwd-bare"]


def test_drop_expired() -> None:
    now = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.UTC)
    later = NetworkServiceEndpoint(name="later", expiration_time=now + datetime.timedelta(1))
    past = NetworkServiceEndpoint(name="past", expiration_time=now - datetime.timedelta(1))
    exact = NetworkServiceEndpoint(name="exact", expiration_time=now)
    naive = NetworkServiceEndpoint(name="naive", expiration_time=datetime.datetime(2031, 1, 1))
    forever = NetworkServiceEndpoint(name="forever")
    alive = drop_expired([later, past, exact, naive, forever], now)
    assert names(alive) == ["later", "naive", "forever"]


def test_round_robin_rotates_per_service() -> None:
    rr = RoundRobin()
    assert rr.order("icmp", "abc") == ["a", "b", "c"]
    assert rr.order("icmp", "abc") == ["b", "c", "a"]
    assert rr.order("other", "xy") == ["x", "y"]
    assert rr.order("icmp", "abc") == ["c", "a", "b"]
    assert rr.order("icmp", "abc") == ["a", "b", "c"]
    assert rr.order("other", "xy") == ["y", "x"]
    assert rr.order("icmp", []) == []  # nothing to rotate: the counter stays
    assert rr.order("icmp", "abc") == ["b", "c", "a"]
    rr.forget("icmp")
    assert rr.order("icmp", "abc") == ["a", "b", "c"]


@given(st.lists(st.integers(), min_size=1, max_size=12, unique=True), st.integers(0, 30))
def test_round_robin_spreads_evenly(candidates: list[int], skip: int) -> None:
    rr = RoundRobin()
    for _ in range(skip):
        rr.order("svc", candidates)
    orders = [rr.order("svc", candidates) for _ in candidates]
    assert sorted(order[0] for order in orders) == sorted(candidates)
    assert all(sorted(order) == sorted(candidates) for order in orders)


# -- errors ---------------------------------------------------------------------------------------


def test_no_endpoint_error_explains_scale_from_zero() -> None:
    ns = scale_from_zero()
    spawned = nse("nse-node-1", ns.name, app="nse-icmp-responder", nodeName="node-1")
    error = no_endpoint_error(ns.name, {"nodeName": "node-2"}, ns, [spawned], "nsmgr@node-2")
    assert isinstance(error, NotFound)
    assert (error.hop, error.service) == ("nsmgr@node-2", "scale-from-zero")
    reason = error.reason
    assert "'scale-from-zero'" in reason
    assert "{nodeName=node-2}" in reason  # the request labels
    assert "nodeName=node-2 (from {{.nodeName}})" in reason  # the rendered selector
    assert "falls through" in reason
    assert "app=icmp-responder-supplier" in reason
    assert "nse-node-1 {app=nse-icmp-responder, nodeName=node-1}" in reason
    assert "all candidates have failed" not in str(error)
    assert str(error).startswith("[nsmgr@node-2] service 'scale-from-zero': ")


def test_no_endpoint_error_when_no_match_applies() -> None:
    ns = secure(FROM_FIREWALL, FROM_MIDDLE)
    error = no_endpoint_error(SECURE, {"app": "unknown-app"}, ns, ENDPOINTS, "nsmgr")
    assert "match 1 (source {app=firewall}) does not apply" in error.reason
    assert "match 2 (source {app=some-middle-app}) does not apply" in error.reason
    assert "no match applies" in error.reason
    assert "3 endpoint(s) considered: fw {app=firewall}; mid" in error.reason


def test_no_endpoint_error_other_cases() -> None:
    missing_ns = no_endpoint_error("ghost", {}, None, [], "nsmgr")
    assert "'ghost' is not registered" in missing_ns.reason
    nobody = no_endpoint_error(SECURE, {}, secure(FROM_ANYWHERE), [], "nsmgr")
    assert "no endpoint of network service" in nobody.reason
    assert "registered" in nobody.reason


def test_no_endpoint_error_truncates_long_lists() -> None:
    many = [nse(f"nse-{i:02}", app="x" * 200) for i in range(30)]
    error = no_endpoint_error(SECURE, {"k": "v" * 500}, secure(FROM_ANYWHERE), many)
    assert "30 endpoint(s) considered" in error.reason
    assert "and 22 more" in error.reason
    assert "nse-07" in error.reason
    assert "nse-08" not in error.reason
    assert len(error.reason) < 2000


def test_select_endpoints_raises_the_explained_error() -> None:
    ns = secure(FROM_FIREWALL, FROM_MIDDLE, FROM_ANYWHERE)
    assert names(select_endpoints(SECURE, {}, ns, ENDPOINTS, hop="nsmgr")) == ["fw"]
    with pytest.raises(NotFound, match="no endpoint has those labels") as caught:
        select_endpoints(SECURE, {}, ns, [MIDDLE, VPN], hop="nsmgr")
    assert caught.value.hop == "nsmgr"
    with pytest.raises(NotFound, match="not registered"):
        select_endpoints(SECURE, {}, None, ENDPOINTS, hop="nsmgr")


def test_no_forwarder_error() -> None:
    ns = secure(FROM_ANYWHERE)
    with pytest.raises(NotFound) as caught:
        select_forwarders(SECURE, {}, ns, [KERNEL_ONLY, BARE], hop="nsmgr@node-1")
    reason = caught.value.reason
    assert "wants forwarder labels {p2p=true} (the default)" in reason
    assert "fwd-special {kind=special, p2p=false}" in reason
    assert "fwd-bare {}" in reason
    empty = no_forwarder_error(SECURE, {}, ns, [], "nsmgr@node-1")
    assert "no forwarder is registered" in empty.reason
    assert names(select_forwarders(SECURE, {}, ns, FORWARDERS)) == ["fwd-p2p"]


def test_all_failed_error_lists_each_candidate() -> None:
    same = [
        ("nse-1", FailedPrecondition("no KERNEL here", hop="nse-1")),
        ("nse-2", FailedPrecondition("no KERNEL there", hop="nse-2")),
    ]
    error = all_failed_error("icmp", same, hop="nsmgr")
    assert type(error) is FailedPrecondition
    assert "all 2 endpoint candidate(s) failed" in error.reason
    assert "nse-1: [nse-1] no KERNEL here; nse-2: [nse-2] no KERNEL there" in error.reason
    mixed = [("fwd-1", FailedPrecondition("x")), ("fwd-2", OSError("boom"))]
    error = all_failed_error("icmp", mixed, hop="nsmgr", kind="forwarder")
    assert type(error) is Unavailable
    assert "forwarder candidate(s)" in error.reason
    assert "fwd-2: boom" in error.reason
    assert type(all_failed_error("icmp", [("a", ValueError("v"))])) is Unavailable
