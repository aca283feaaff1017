"""Routes and policy routes on a wire's interface (sync helpers for jobs on a handle thread).

Routes carry the routing protocol number :data:`RTPROT_TRIONSM` (``proto 126`` in ``ip route``)
so an operator can tell ours apart; they go with their interface. Policy routes are a routing
table of their own (the lowest free number from 10000, chosen under the namespace's lock) plus an
``ip rule`` tagged with the same protocol number. Rules outlive interfaces, so removing a wire
removes the rules whose tables route through its interface, and every removal also sweeps our
rules whose tables have become empty (their interface left with a namespace or a crash).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._handles import step
from ._netns import Namespace
from ._wireplan import PolicyPlan, RoutePlan

__all__ = [
    "RTPROT_TRIONSM",
    "add_policy",
    "add_route",
    "remove_orphan_rules",
    "remove_policies",
    "unless",
]

RTPROT_TRIONSM = 126  # the routing protocol number on our routes and policy rules
_POLICY_TABLES = range(10000, 2**31)
_SYSTEM_TABLES = {0, 253, 254, 255}
_RTNH_F_ONLINK = 0x04
_RT_SCOPE_LINK = 253


def add_route(ipr: Any, index: int, route: RoutePlan, *, table: int | None, what: str) -> None:
    family = socket.AF_INET if route.prefix.version == 4 else socket.AF_INET6
    spec: dict[str, object] = {"dst": str(route.prefix), "oif": index, "family": family}
    spec["proto"] = RTPROT_TRIONSM
    if table is not None:
        spec["table"] = table
    if route.gateway is not None:
        spec.update(gateway=str(route.gateway), flags=_RTNH_F_ONLINK)
    elif family == socket.AF_INET:
        spec["scope"] = _RT_SCOPE_LINK
    via = f" via {route.gateway}" if route.gateway else ""
    with step(f"adding route {route.prefix}{via} {what}"):
        ipr.route("add", **spec)


def add_policy(ipr: Any, index: int, policy: PolicyPlan, what: str) -> None:
    family = socket.AF_INET if policy.family == 4 else socket.AF_INET6
    with step(f"listing routing tables {what}"):
        used = {r.get("table") for r in ipr.rule("dump")}
        used |= {r.get("table") for r in ipr.route("dump")}
    table = next(t for t in _POLICY_TABLES if t not in used)
    for route in policy.routes:
        add_route(ipr, index, route, table=table, what=f"in table {table} {what}")
    rule: dict[str, object] = {"family": family, "table": table, "protocol": RTPROT_TRIONSM}
    if policy.source is not None:
        rule.update(src=str(policy.source.network_address), src_len=policy.source.prefixlen)
    if policy.protocol is not None:
        rule["ip_proto"] = policy.protocol
    if policy.dst_ports is not None:
        rule["dport_range"] = "{}:{}".format(*policy.dst_ports)
    if policy.src_ports is not None:
        rule["sport_range"] = "{}:{}".format(*policy.src_ports)
    with step(f"adding a policy rule to table {table} {what}"):
        ipr.rule("add", **rule)


def remove_policies(ipr: Any, index: int, here: Namespace) -> None:
    """Rules whose table routes through ``index`` (they outlive the interface otherwise)."""
    rules = _our_rules(ipr, here)  # few or none: then no route listing at all
    if not rules:
        return
    with step(f"listing policy routes in {here}"):
        tables = {_table(r) for r in ipr.route("dump") if r.get("oif") == index}
    for rule in rules:
        if _table(rule) in tables and rule.get("table") not in _SYSTEM_TABLES:
            _delete_rule(ipr, rule, here)


def remove_orphan_rules(ipr: Any, here: Namespace) -> None:
    """Our rules whose tables are empty: their interface went with a namespace or a crash.

    Needs no lock against a concurrent :func:`add_policy`: that adds a table's routes before its
    rule, and the rules are listed here before the routes.
    """
    rules = _our_rules(ipr, here)  # rules first: a rule seen has its routes in place already
    if not rules:
        return
    with step(f"listing policy routes in {here}"):
        tables = {_table(r) for r in ipr.route("dump")}
    for rule in rules:
        if _table(rule) not in tables:
            _delete_rule(ipr, rule, here)


def _table(message: Any) -> tuple[int, int]:
    """``(family, table)`` of a route or rule: each family has its own tables."""
    return message["family"], message.get("table")


def _our_rules(ipr: Any, here: Namespace) -> list[Any]:
    with step(f"listing policy rules in {here}"):
        rules = ipr.rule("dump")
        return [r for r in rules if r.get("protocol") == RTPROT_TRIONSM]


def _delete_rule(ipr: Any, rule: Any, here: Namespace) -> None:
    with (
        step(f"deleting policy rule to table {rule.get('table')} in {here}"),
        unless(errno.ENOENT),
    ):
        ipr.rule("del", **_rule_key(rule))


def _rule_key(rule: Any) -> dict[str, object]:
    get = rule.get
    key = {"family": rule["family"], "table": get("table"), "priority": get("priority")}
    key["protocol"] = RTPROT_TRIONSM
    for name in ("src", "ip_proto", "dport_range", "sport_range"):
        if get(name) is not None:
            key[name] = get(name)
    if get("src") is not None:
        key["src_len"] = rule["src_len"]
    return key


@contextmanager
def unless(code: int) -> Iterator[None]:
    """Swallow a netlink error with errno ``code`` (an idempotent delete)."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, "code", None) != code:
            raise
