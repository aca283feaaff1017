"""The reconciler's rules (pure: no kernel), the alias that carries a wire's owner, and the sweep
meeting a re-request on one alias (autojump clock; the kernel's scan and removal replaced by
fakes, the data plane by one held at a gate, so each interleaving is forced, not timed)."""

from __future__ import annotations

from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trionsm.kernel
from trionsm.actors._dataplane import Wire, WireSpec
from trionsm.actors._reconcile import (
    DEFAULT_RECONCILE_GRACE,
    Reconciler,
    ensure_wire,
    serve_reconcile,
)
from trionsm.errors import PermissionDenied
from trionsm.kernel import Interface, KernelWire, WireAlias, WireEnd, alias_for, parse_alias
from trionsm.kernel._netns import Namespace

NS_A = Namespace(url="file:///run/netns/a", path="/run/netns/a", dev=4, ino=100)
NS_B = Namespace(url="file:///run/netns/b", path="/run/netns/b", dev=4, ino=200)


def leftover(namespace: Namespace, index: int, alias: str, ifname: str = "nsm-1") -> Interface:
    return Interface(namespace=namespace, ifname=ifname, index=index, alias=alias)


@pytest.mark.parametrize(
    ("owner", "connection_id", "alias"),
    [
        ("forwarder-0-0", "nsc-1", "trionsm:forwarder-0-0:nsc-1"),
        ("fwd@node-1", "3f1c-uuid", "trionsm:fwd@node-1:3f1c-uuid"),
        ("odd:name%", "id:with:colons", "trionsm:odd%3Aname%25:id:with:colons"),
        ("", "nsc-1", "trionsm:nsc-1"),
    ],
)
def test_alias_names_the_owner_and_the_client_connection_and_reads_back(
    owner: str, connection_id: str, alias: str
) -> None:
    assert alias_for(connection_id, owner) == alias
    assert parse_alias(alias) == WireAlias(owner, connection_id)
    assert str(WireAlias(owner, connection_id)) == alias


@pytest.mark.parametrize("alias", [None, "", "eth0 uplink", "trionsm:", "trionsm::x", "trionsm:a:"])
def test_anything_else_is_not_one_of_our_aliases(alias: str | None) -> None:
    assert parse_alias(alias) is None


def test_before_the_scan_every_alias_may_have_a_leftover_after_it_only_those_found() -> None:
    reconciler = Reconciler("fwd", grace=10.0)
    mine = alias_for("nsc-1", "fwd")
    assert reconciler.may_hold(mine)
    reconciler.found([leftover(NS_A, 5, mine)], now=100.0)
    assert reconciler.deadline == 110.0
    assert reconciler.may_hold(mine)
    assert not reconciler.may_hold(alias_for("nsc-2", "fwd"))


def test_unclaimed_leftovers_are_removed_only_when_the_grace_is_over_and_only_once() -> None:
    reconciler = Reconciler("fwd", grace=10.0)
    claimed, unclaimed = alias_for("nsc-1", "fwd"), alias_for("nsc-2", "fwd")
    found = [leftover(NS_A, 5, claimed), leftover(NS_B, 7, claimed), leftover(NS_A, 6, unclaimed)]
    reconciler.found(found, now=0.0)
    reconciler.claim(claimed)  # ends unknown: every leftover of the alias is kept
    assert reconciler.sweep(now=9.999) == []
    assert [str(i) for i in reconciler.unclaimed] == [str(found[2])]
    assert reconciler.sweep(now=10.0) == [found[2]]
    assert reconciler.done
    assert reconciler.sweep(now=20.0) == []
    assert not reconciler.may_hold(claimed)  # done: later requests create as usual
    reconciler.claim(unclaimed)
    assert reconciler.claims == {}


def test_a_claim_with_its_ends_keeps_those_and_lets_the_replaced_ends_go() -> None:
    reconciler = Reconciler("fwd", grace=1.0)
    alias = alias_for("nsc-1", "fwd")
    old_client, old_endpoint = leftover(NS_A, 5, alias), leftover(NS_B, 9, alias, "nsm-x")
    kept = leftover(NS_B, 8, alias, "nsm-y")
    reconciler.found([old_client, old_endpoint, kept], now=0.0)
    reconciler.claim(alias, keep=[kept.key, (NS_A.key, 12)])
    assert reconciler.sweep(now=1.0) == [old_client, old_endpoint]


def test_a_rescan_starts_a_new_grace_and_keeps_the_claims_made_so_far() -> None:
    reconciler = Reconciler("fwd", grace=5.0)
    alias = alias_for("nsc-1", "fwd")
    reconciler.claim(alias)  # a re-request arrived before the scan was through
    reconciler.found([leftover(NS_A, 5, alias)], now=0.0)
    reconciler.found([leftover(NS_A, 5, alias)], now=3.0)  # its task was restarted
    assert reconciler.sweep(now=5.0) == []
    assert reconciler.sweep(now=8.0) == []
    assert reconciler.done


def test_a_scan_started_again_after_a_sweep_records_the_claims_made_meanwhile() -> None:
    reconciler = Reconciler("fwd", grace=5.0)
    alias = alias_for("nsc-1", "fwd")
    reconciler.found([], now=0.0)
    assert reconciler.sweep(now=5.0) == []
    reconciler.claim(alias)  # done: nothing to claim against
    assert reconciler.claims == {}
    reconciler.begin()  # its task was restarted (the forwarder's connections were)
    assert reconciler.may_hold(alias)
    reconciler.claim(alias)  # a re-request while the new scan runs
    reconciler.found([leftover(NS_A, 5, alias), leftover(NS_A, 6, "trionsm:fwd:x")], now=10.0)
    assert [i.alias for i in reconciler.sweep(now=15.0)] == ["trionsm:fwd:x"]


def test_a_scan_started_again_after_its_sweep_keeps_every_wire_a_live_connection_holds() -> None:
    alias, late = alias_for("nsc-1", "fwd"), alias_for("nsc-2", "fwd")
    held = [held_wire("nsc-1", 5, 9)]
    reconciler = Reconciler("fwd", grace=5.0, live=lambda: held)
    reconciler.found([], now=0.0)
    assert reconciler.sweep(now=5.0) == []  # the first sweep: claims dropped
    reconciler.begin()  # started again with the lease (its connections live on, no re-request)
    old_end = leftover(NS_A, 4, alias)  # an end its wire no longer uses
    stray = leftover(NS_A, 6, "trionsm:fwd:gone")
    found = [
        leftover(NS_A, 5, alias), leftover(NS_B, 9, alias, "nsm-x"), old_end, stray,
        leftover(NS_A, 12, late), leftover(NS_B, 13, late, "nsm-x"),
    ]  # fmt: skip
    reconciler.begin()  # and again: reconcile itself crashed mid-scan
    reconciler.found(found, now=10.0)
    held.append(held_wire("nsc-2", 12, 13))  # a connection came to hold its wire meanwhile
    assert sorted(i.index for i in reconciler.sweep(now=15.0)) == [old_end.index, stray.index]


def held_wire(connection_id: str, client: int, endpoint: int) -> Wire:
    ends = WireEnd(NS_A, "nsm-1", client), WireEnd(NS_B, "nsm-x", endpoint)
    return Wire(spec_for(connection_id), KernelWire(connection_id, *ends, mtu=0))


def test_the_default_grace_outlasts_a_refresh_at_nsm_defaults() -> None:
    # NSC refresh: 20 % of a 10-minute token = 120 s; heals come within seconds.
    assert DEFAULT_RECONCILE_GRACE > 0.2 * 600


# --- the sweep and a re-request on one alias: serialised, whatever the interleaving --------------


@attrs.define
class GatedPlane:
    """A data plane whose ``ensure`` waits at a gate (a re-request adopting, held mid-way) and
    returns the wire of ``wire_ends``; records each call's ``adopt`` and the order of events."""

    events: list[str]
    wire_ends: tuple[WireEnd, WireEnd]
    gate: trio.Event = attrs.Factory(trio.Event)
    entered: trio.Event = attrs.Factory(trio.Event)
    adopts: list[bool] = attrs.Factory(list)

    async def ensure(
        self,
        current: Wire | None,
        spec: WireSpec,
        *,
        hop: str,
        service: str,
        adopt: bool = False,
        forget: Any = None,
    ) -> Wire:
        self.adopts.append(adopt)
        self.events.append("ensure")
        self.entered.set()
        await self.gate.wait()
        client, endpoint = self.wire_ends
        return Wire(spec, KernelWire(spec.connection_id, client, endpoint, mtu=0))


def spec_for(alias_id: str) -> WireSpec:
    return WireSpec(
        connection_id=alias_id,
        client_netns=NS_A.url,
        client_ifname="nsm-1",
        endpoint_netns=NS_B.url,
        endpoint_ifname="nsm-x",
        mtu=0,
        ip_context=None,
        encoded=b"",
        owner="fwd",
    )


def fake_kernel(
    monkeypatch: pytest.MonkeyPatch,
    found: list[Interface],
    events: list[str],
    gate: trio.Event | None = None,
) -> None:
    """The kernel's scan answers ``found``; each removal is recorded in ``events`` (after
    waiting at ``gate``, if given)."""

    async def scan(owner: str, **_: Any) -> list[Interface]:
        return [leftover for leftover in found if leftover.parsed.owner == owner]  # type: ignore[union-attr]

    async def remove(interfaces: list[Interface], **_: Any) -> int:
        events.append("removing " + ",".join(f"#{i.index}" for i in interfaces))
        if gate is not None:
            await gate.wait()
        events.append("removed")
        return len(interfaces)

    monkeypatch.setattr(trionsm.kernel, "scan_namespaces", scan)
    monkeypatch.setattr(trionsm.kernel, "remove_interfaces", remove)


async def test_a_sweep_waits_for_an_adoption_in_flight_and_keeps_what_it_claims(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    alias = alias_for("nsc-1", "fwd")
    adopted = [leftover(NS_A, 5, alias), leftover(NS_B, 9, alias, "nsm-x")]
    stray = leftover(NS_A, 6, alias_for("nsc-gone", "fwd"))
    events: list[str] = []
    fake_kernel(monkeypatch, [*adopted, stray], events)
    reconciler = Reconciler("fwd", grace=10.0)
    plane = GatedPlane(events, (WireEnd(NS_A, "nsm-1", 5), WireEnd(NS_B, "nsm-x", 9)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_reconcile, reconciler, hop="fwd"))
        await trio.sleep(9.0)  # the re-request comes just before the grace ends...
        request = partial(
            ensure_wire, plane, None, spec_for("nsc-1"), reconciler=reconciler, hop="fwd",
            service="icmp",
        )  # fmt: skip
        nursery.start_soon(request)
        await plane.entered.wait()  # ...found its leftover, and is adopting it (not claimed)
        await trio.sleep(5.0)  # the grace is over: the sweep runs
        await trio.testing.wait_all_tasks_blocked()
        assert events == ["ensure", "removing #6", "removed"]  # the stray went; not the wire
        assert not reconciler.finished  # the sweep waits for the alias being adopted
        plane.gate.set()  # the adoption ends with its claim
        await trio.testing.wait_all_tasks_blocked()
        assert reconciler.finished
        assert events == ["ensure", "removing #6", "removed"]  # the claimed wire stays
        assert plane.adopts == [True]


async def test_a_request_that_comes_while_the_sweep_removes_its_leftover_waits_then_creates(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    alias = alias_for("nsc-1", "fwd")
    events: list[str] = []
    removal = trio.Event()
    fake_kernel(monkeypatch, [leftover(NS_A, 5, alias)], events, gate=removal)
    reconciler = Reconciler("fwd", grace=10.0)
    plane = GatedPlane(events, (WireEnd(NS_A, "nsm-1", 12), WireEnd(NS_B, "nsm-x", 13)))
    plane.gate.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_reconcile, reconciler, hop="fwd"))
        await trio.sleep(11.0)
        await trio.testing.wait_all_tasks_blocked()
        assert events == ["removing #5"]  # the sweep is removing the unclaimed leftover...
        request = partial(
            ensure_wire, plane, None, spec_for("nsc-1"), reconciler=reconciler, hop="fwd",
            service="icmp",
        )  # fmt: skip
        nursery.start_soon(request)  # ...when its client re-requests
        await trio.testing.wait_all_tasks_blocked()
        assert events == ["removing #5"]  # the request waits for the removal
        removal.set()
    assert events == ["removing #5", "removed", "ensure"]
    assert plane.adopts == [False]  # nothing left to adopt: it makes the wire anew
    assert reconciler.finished


async def test_a_removal_the_kernel_refuses_fails_the_sweep_with_its_error_after_the_others(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused, removed = leftover(NS_A, 5, alias_for("nsc-1", "fwd")), []
    others = [leftover(NS_A, 6, alias_for("nsc-2", "fwd")), leftover(NS_B, 7, "trionsm:fwd:x")]

    async def scan(owner: str, **_: Any) -> list[Interface]:
        return [refused, *others]

    async def remove(interfaces: list[Interface], **_: Any) -> int:
        if refused in interfaces:
            raise PermissionDenied("deleting interface #5: refused", hop="fwd")
        removed.extend(interfaces)
        return len(interfaces)

    monkeypatch.setattr(trionsm.kernel, "scan_namespaces", scan)
    monkeypatch.setattr(trionsm.kernel, "remove_interfaces", remove)
    reconciler = Reconciler("fwd", grace=1.0)
    with pytest.raises(PermissionDenied, match="refused"):  # the error itself, not a group
        await serve_reconcile(reconciler, hop="fwd")
    assert sorted(i.index for i in removed) == [6, 7]
    assert not reconciler.finished  # its supervisor runs it again: a new scan
