"""The generated NSM v1 wire model (trionsm.api, betterproto2) on the wire.

Round trips through bytes; gRPC method paths and cardinalities of the generated bases and stubs;
byte-level interop with the standard protobuf runtime (modules protoc generates here from the same
proto/ files); schema agreement with protoc's descriptors; import hygiene.
"""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import pathlib
import pkgutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import betterproto2
import pytest
from betterproto2.grpclib import ServiceBase, ServiceStub
from google.protobuf import descriptor as d
from google.protobuf.message import Message as PbMessage
from google.protobuf.timestamp_pb2 import Timestamp
from grpclib.const import Cardinality

import trionsm.api
from trionsm.api import connection as nc
from trionsm.api import connectioncontext as ncc
from trionsm.api import ipam
from trionsm.api import networkservice as ns
from trionsm.api import registry as reg
from trionsm.api.google.protobuf import Empty
from trionsm.api.grpc.health import v1 as health
from trionsm.api.message_pool import default_message_pool
from trionsm.api.trionsm.admin import v1 as admin

ROOT = pathlib.Path(__file__).resolve().parents[2]
# As in proto/generate.sh: each NSM directory is its own root (NSM imports by bare file name).
INCLUDES = ["proto/networkservice", "proto/registry", "proto/ipam", "proto"]
PB2_ORDER = ["connectioncontext", "connection", "networkservice", "registry", "ipam", "health"]
PB2_ORDER += ["admin"]  # trionsm's own admin service (trionsm/admin/v1/admin.proto)
API_MODULES = [trionsm.api] + [
    importlib.import_module(m.name)
    for m in pkgutil.walk_packages(trionsm.api.__path__, "trionsm.api.")
]


def defined(base: type) -> set[Any]:
    """The subclasses of base that the generated modules define."""
    return {
        o
        for m in API_MODULES
        for o in vars(m).values()
        if isinstance(o, type) and issubclass(o, base) and o.__module__ == m.__name__
    }


BASES, STUBS = sorted(defined(ServiceBase), key=str), sorted(defined(ServiceStub), key=str)
URL = "type.googleapis.com/"
MESSAGE_NAMES = sorted(u.removeprefix(URL) for u in default_message_pool.url_to_type)
EXPIRES = datetime.datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=datetime.UTC)
SECOND = datetime.timedelta(seconds=1)
HOPS = ["nsc-1", "nsmgr-a", "forwarder-a", "nse-1"]
U, S, B = Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM
NSE_REG, NS_REG = "/registry.NetworkServiceEndpointRegistry/", "/registry.NetworkServiceRegistry/"
MON = "/connection.MonitorConnection/"
NSM_METHODS = {  # path: (cardinality, request, reply), as NSM (and grpc.health.v1) define them
    "/networkservice.NetworkService/Request": (U, ns.NetworkServiceRequest, nc.Connection),
    "/networkservice.NetworkService/Close": (U, nc.Connection, Empty),
    f"{MON}MonitorConnections": (S, nc.MonitorScopeSelector, nc.ConnectionEvent),
    f"{NS_REG}Register": (U, reg.NetworkService, reg.NetworkService),
    f"{NS_REG}Find": (S, reg.NetworkServiceQuery, reg.NetworkServiceResponse),
    f"{NS_REG}Unregister": (U, reg.NetworkService, Empty),
    f"{NSE_REG}Register": (U, reg.NetworkServiceEndpoint, reg.NetworkServiceEndpoint),
    f"{NSE_REG}Find": (S, reg.NetworkServiceEndpointQuery, reg.NetworkServiceEndpointResponse),
    f"{NSE_REG}Unregister": (U, reg.NetworkServiceEndpoint, Empty),
    "/ipam.IPAM/ManagePrefixes": (B, ipam.PrefixRequest, ipam.PrefixResponse),
    "/grpc.health.v1.Health/Check": (U, health.HealthCheckRequest, health.HealthCheckResponse),
    "/grpc.health.v1.Health/Watch": (S, health.HealthCheckRequest, health.HealthCheckResponse),
}
ADMIN = "/trionsm.admin.v1.Admin/"
SERVED_METHODS = NSM_METHODS | {  # and trionsm's own admin service (not NSM's)
    f"{ADMIN}Tree": (U, admin.TreeRequest, admin.TreeResponse),
    f"{ADMIN}Connections": (U, admin.ConnectionsRequest, admin.ConnectionsResponse),
    f"{ADMIN}Crash": (U, admin.CrashRequest, admin.CrashResponse),
}


# ------------------------------------------------------------- betterproto2-side values
def bp_connection() -> nc.Connection:
    r, v6, gw = ncc.Route, ncc.IpFamily(family=ncc.IpFamilyFamily.IPV6), "172.16.1.0"
    ip = ncc.IpContext(src_ip_addrs=["172.16.1.1/32"], dst_ip_addrs=["172.16.1.0/32"])
    ip.src_ip_required = True
    ip.src_routes = [r(prefix="172.16.1.0/32"), r(prefix="10.0.0.0/8", next_hop=gw)]
    ip.dst_routes = [r(prefix="172.16.1.1/32")]
    ip.excluded_prefixes = ["10.96.0.0/12", "10.244.0.0/16"]
    ip.ip_neighbors = [ncc.IpNeighbor(ip="172.16.1.0", hardware_address="02:fe:00:00:00:01")]
    ip.extra_prefix_request = [
        ncc.ExtraPrefixRequest(addr_family=v6, prefix_len=64, required_number=1, requested_number=2)
    ]
    ip.extra_prefixes = ["fd00::/64"]
    policy = ncc.PolicyRoute(from_="172.16.1.1/32", proto="6", dst_port="8080-8090")
    policy.routes = [r(prefix="0.0.0.0/0", next_hop=gw)]
    ip.policies = [policy]
    dns = ncc.DnsConfig(dns_server_ips=["10.96.0.10"], search_domains=["svc.cluster.local"])
    eth = ncc.EthernetContext(src_mac="02:fe:00:00:00:02", dst_mac="02:fe:00:00:00:01")
    eth.vlan_tag = -1
    context = ncc.ConnectionContext(ip_context=ip, dns_context=ncc.DnsContext(configs=[dns]))
    context.ethernet_context, context.extra_context, context.mtu = eth, {"k": "v"}, 1446
    segments = [
        nc.PathSegment(name=h, id=f"id-{i}", token=f"jwt.{i}", expires=EXPIRES + SECOND * i)
        for i, h in enumerate(HOPS)
    ]
    segments[3].metrics = {"client_interface": "KERNEL/nsm-1"}
    params = {"inodeURL": "inode://4/4026532", "name": "icmp-respo-x1", "MTU": "1446"}
    return nc.Connection(
        id="conn-2",
        network_service="icmp-responder@my.cluster2",
        mechanism=nc.Mechanism(cls="LOCAL", type="KERNEL", parameters=params),
        context=context,
        labels={"app": "nsc", "nodeName": "node-a"},
        path=nc.Path(index=1, path_segments=segments),
        network_service_endpoint_name="nse-1",
        payload="IP",
        state=nc.State.REFRESH_REQUESTED,
    )


def bp_nse() -> reg.NetworkServiceEndpoint:
    return reg.NetworkServiceEndpoint(
        name="nse-1",
        network_service_names=["icmp-responder", "vl3"],
        network_service_labels={
            "icmp-responder": reg.NetworkServiceLabels(labels={"app": "icmp", "zone": "a"}),
            "vl3": reg.NetworkServiceLabels(labels={}),
        },
        url="tcp://10.0.0.5:5001",
        expiration_time=EXPIRES,
        initial_registration_time=EXPIRES - datetime.timedelta(minutes=1),
        path_ids=["spiffe://example.org/nse-1"],
    )


def bp_request() -> ns.NetworkServiceRequest:
    mech = nc.Mechanism
    return ns.NetworkServiceRequest(
        connection=bp_connection(),
        mechanism_preferences=[
            mech(cls="LOCAL", type="KERNEL", parameters={"inodeURL": "file:///proc/1/ns/net"}),
            mech(cls="REMOTE", type="WIREGUARD", parameters={"src_ip": "10.0.0.1"}),
        ],
    )


# --------------------------------------- protobuf-side values, built independently field by field
def pb_connection(pb: SimpleNamespace) -> PbMessage:
    c, cc = pb.connection, pb.connectioncontext
    conn = c.Connection(
        id="conn-2",
        network_service="icmp-responder@my.cluster2",
        labels={"app": "nsc", "nodeName": "node-a"},
        network_service_endpoint_name="nse-1",
        payload="IP",
        state=c.REFRESH_REQUESTED,
    )
    conn.mechanism.cls, conn.mechanism.type = "LOCAL", "KERNEL"
    conn.mechanism.parameters.update(MTU="1446", name="icmp-respo-x1", inodeURL="inode://4/4026532")
    ip = conn.context.ip_context
    ip.src_ip_addrs.append("172.16.1.1/32")
    ip.dst_ip_addrs.append("172.16.1.0/32")
    ip.src_ip_required = True
    ip.src_routes.add(prefix="172.16.1.0/32")
    ip.src_routes.add(prefix="10.0.0.0/8", nextHop="172.16.1.0")  # camelCase, as in NSM
    ip.dst_routes.add(prefix="172.16.1.1/32")
    ip.excluded_prefixes.extend(["10.96.0.0/12", "10.244.0.0/16"])
    ip.ip_neighbors.add(ip="172.16.1.0", hardware_address="02:fe:00:00:00:01")
    epr = ip.extra_prefix_request.add(prefix_len=64, required_number=1, requested_number=2)
    epr.addr_family.family = cc.IpFamily.IPV6
    ip.extra_prefixes.append("fd00::/64")
    policy = ip.policies.add(proto="6", dst_port="8080-8090")
    setattr(policy, "from", "172.16.1.1/32")  # "from" is a Python keyword
    policy.routes.add(prefix="0.0.0.0/0", nextHop="172.16.1.0")
    dns = conn.context.dns_context.configs.add(dns_server_ips=["10.96.0.10"])
    dns.search_domains.append("svc.cluster.local")
    eth = conn.context.ethernet_context
    eth.src_mac, eth.dst_mac, eth.vlan_tag = "02:fe:00:00:00:02", "02:fe:00:00:00:01", -1
    conn.context.extra_context["k"] = "v"
    conn.context.MTU = 1446  # upper case, as in NSM
    conn.path.index = 1
    for i, h in enumerate(HOPS):
        seg = conn.path.path_segments.add(name=h, id=f"id-{i}", token=f"jwt.{i}")
        # EXPIRES + i seconds, written out as Unix time (not converted by either library)
        seg.expires.CopyFrom(Timestamp(seconds=1795694400 + i, nanos=123456000))
    conn.path.path_segments[3].metrics["client_interface"] = "KERNEL/nsm-1"
    return conn


def pb_nse(pb: SimpleNamespace) -> PbMessage:
    nse = pb.registry.NetworkServiceEndpoint(
        name="nse-1",
        network_service_names=["icmp-responder", "vl3"],
        url="tcp://10.0.0.5:5001",
        path_ids=["spiffe://example.org/nse-1"],
    )
    nse.network_service_labels["icmp-responder"].labels.update({"app": "icmp", "zone": "a"})
    nse.network_service_labels.get_or_create("vl3")
    nse.expiration_time.FromDatetime(EXPIRES)
    nse.initial_registration_time.FromDatetime(EXPIRES - datetime.timedelta(minutes=1))
    return nse


def pb_request(pb: SimpleNamespace) -> PbMessage:
    req = pb.networkservice.NetworkServiceRequest(connection=pb_connection(pb))
    local = req.mechanism_preferences.add(cls="LOCAL", type="KERNEL")
    local.parameters["inodeURL"] = "file:///proc/1/ns/net"
    remote = req.mechanism_preferences.add(cls="REMOTE", type="WIREGUARD")
    remote.parameters["src_ip"] = "10.0.0.1"
    return req


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="session")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """protoc --python_out modules of proto/, loaded by file location (never via sys.path)."""
    out = tmp_path_factory.mktemp("pb2")
    # proto/etcd/ is etcd's API (generated into transport/_etcd/), not the NSM model.
    protos = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "proto").rglob("*.proto")
        if p.relative_to(ROOT / "proto").parts[0] != "etcd"
    )
    includes = [f"-I{i}" for i in INCLUDES]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *includes, f"--python_out={out}", *protos]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"protoc failed:\n{res.stderr}"
    files = {p.name.removesuffix("_pb2.py"): p for p in out.rglob("*.py")}
    assert sorted(files) == sorted(PB2_ORDER), f"unexpected protoc output: {files}"
    assert files["health"] == out / "grpc/health/v1/health_pb2.py"
    mods: dict[str, ModuleType] = {}
    with pytest.MonkeyPatch.context() as mp:  # the NSM *_pb2 import each other by bare name
        for name in PB2_ORDER:  # dependencies first
            spec = importlib.util.spec_from_file_location(f"{name}_pb2", files[name])
            assert spec is not None
            assert spec.loader is not None
            mods[name] = importlib.util.module_from_spec(spec)
            mp.setitem(sys.modules, spec.name, mods[name])
            spec.loader.exec_module(mods[name])
    return SimpleNamespace(**mods)


def bp_class(full_name: str) -> type:
    return default_message_pool.url_to_type[URL + full_name]


def unknown_in_bp(msg: betterproto2.Message, where: str | None = None) -> list[str]:
    """Where (as a field path) msg or a message inside it holds unknown fields."""
    where = type(msg).__name__ if where is None else where
    found = [where] if msg._unknown_fields else []
    for name in msg._betterproto.sorted_field_names:
        v = getattr(msg, name)
        for x in v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v]:
            if isinstance(x, betterproto2.Message):
                found += unknown_in_bp(x, f"{where}.{name}")
    return found


def all_files(pb: SimpleNamespace) -> list[d.FileDescriptor]:
    """The proto/ files and the well-known files they import."""
    files = [f for m in vars(pb).values() for f in (m.DESCRIPTOR, *m.DESCRIPTOR.dependencies)]
    return list({f.name: f for f in files}.values())


def walk_messages(descs: Any) -> Iterator[d.Descriptor]:
    for desc in descs:
        if not desc.GetOptions().map_entry:
            yield desc
            yield from walk_messages(desc.nested_types)


# ---------------------------------------------------------------------- 1. round trips
ROUND_TRIP: list[Callable[[], betterproto2.Message]] = [
    bp_connection,
    bp_nse,
    bp_request,
    lambda: nc.ConnectionEvent(
        type=nc.ConnectionEventType.UPDATE, connections={"c": bp_connection()}
    ),
    lambda: nc.MonitorScopeSelector(
        path_segments=[nc.PathSegment(name="nsmgr-a")], network_services=["icmp-responder"]
    ),
    lambda: ipam.PrefixRequest(
        type=ipam.Type.ALLOCATE, prefix="172.16.0.0/16", exclude_prefixes=["172.16.1.0/24"]
    ),
    lambda: ipam.PrefixResponse(prefix="172.16.2.0/24"),
    lambda: health.HealthCheckRequest(service="networkservice.NetworkService"),
    lambda: health.HealthCheckResponse(status=health.HealthCheckResponseServingStatus.SERVING),
    Empty,
]


@pytest.mark.parametrize("make", ROUND_TRIP, ids=lambda f: type(f()).__name__)
def test_round_trip_through_bytes(make: Callable[[], betterproto2.Message]) -> None:
    msg = make()
    data = bytes(msg)
    assert (data == b"") is isinstance(msg, Empty)
    back = type(msg).parse(data)
    assert back == msg
    assert bytes(back) == data
    assert unknown_in_bp(back) == []


def test_connection_round_trip_keeps_types_and_values() -> None:
    back = nc.Connection.parse(bytes(bp_connection()))
    assert len(back.path.path_segments) == 4
    assert back.path.path_segments[2].expires == EXPIRES + 2 * SECOND
    assert back.path.path_segments[3].metrics == {"client_interface": "KERNEL/nsm-1"}
    assert back.context.ip_context.policies[0].from_ == "172.16.1.1/32"
    assert back.context.ethernet_context.vlan_tag == -1
    assert back.context.mtu == 1446
    assert back.state is nc.State.REFRESH_REQUESTED
    assert nc.Connection.parse(bytes(nc.Connection())).state is nc.State.UP  # unset reads as UP


# ------------------------------------------------------------------ 2. gRPC method paths
def test_server_bases_serve_exactly_nsm_methods() -> None:
    handlers = [(p, h) for base in BASES for p, h in base().__mapping__().items()]
    served = {p: (h.cardinality, h.request_type, h.reply_type) for p, h in handlers}
    assert len(served) == len(handlers), "two bases serve the same path"
    assert served == SERVED_METHODS


class _Called(Exception):
    pass


class _RecordingChannel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Cardinality, type]] = []

    def request(self, route: str, card: Cardinality, req: type, rep: type, **_: Any) -> None:
        self.calls.append((route, card, rep))
        raise _Called  # before any I/O: nothing is sent


async def test_client_stubs_call_exactly_nsm_methods() -> None:
    channel = _RecordingChannel()
    for stub_cls in STUBS:
        for name in [n for n in vars(stub_cls) if not n.startswith("_")]:
            call = getattr(stub_cls(channel), name)(None)
            step = call.__anext__() if inspect.isasyncgen(call) else call
            with pytest.raises(_Called):
                await step
    called = {path: (card, reply) for path, card, reply in channel.calls}
    assert len(called) == len(channel.calls), "two stub methods call the same path"
    assert called == {p: (card, reply) for p, (card, _, reply) in SERVED_METHODS.items()}


def test_services_in_proto_are_nsm_methods(pb2: SimpleNamespace) -> None:
    kinds = {(False, False): U, (False, True): S, (True, True): B}
    services = [s for x in vars(pb2).values() for s in x.DESCRIPTOR.services_by_name.values()]
    from_protoc = {
        f"/{svc.full_name}/{m.name}": (
            kinds[(m.client_streaming, m.server_streaming)],
            bp_class(m.input_type.full_name),
            bp_class(m.output_type.full_name),
        )
        for svc in services
        for m in svc.methods
    }
    assert from_protoc == SERVED_METHODS


# ----------------------------------------------------- 3. interop with the protobuf runtime
INTEROP = {
    "Connection": (bp_connection, pb_connection),
    "NetworkServiceEndpoint": (bp_nse, pb_nse),
    "NetworkServiceRequest": (bp_request, pb_request),
}


@pytest.mark.parametrize("name", INTEROP)
def test_wire_interop_with_protobuf(pb2: SimpleNamespace, name: str) -> None:
    bp, pb = INTEROP[name][0](), INTEROP[name][1](pb2)
    from_bp = type(pb).FromString(bytes(bp))  # betterproto2 -> protobuf
    with_unknown = from_bp.SerializeToString(deterministic=True)
    from_bp.DiscardUnknownFields()  # recursive
    assert from_bp.SerializeToString(deterministic=True) == with_unknown, "unknown fields"
    assert from_bp == pb, "betterproto2's bytes parse in protobuf to a different message"
    from_pb = type(bp).parse(pb.SerializeToString())  # protobuf -> betterproto2
    assert unknown_in_bp(from_pb) == [], "betterproto2 saw unknown fields in protobuf's bytes"
    assert from_pb == bp, "protobuf's bytes parse in betterproto2 to a different message"
    assert len(bytes(bp)) == pb.ByteSize(), "encoded sizes differ"


def test_interop_detects_a_difference(pb2: SimpleNamespace) -> None:
    """The equalities above are not vacuous: one changed map value deep inside is seen."""
    wrong = pb_connection(pb2)
    wrong.path.path_segments[3].metrics["client_interface"] = "KERNEL/nsm-2"
    assert nc.Connection.parse(wrong.SerializeToString()) != bp_connection()
    assert type(wrong).FromString(bytes(bp_connection())) != wrong


# ------------------------------------------------------------------ 3b. schema agreement
FD = d.FieldDescriptor
PB_TYPE = {getattr(FD, n): n[5:].lower() for n in dir(FD) if n.startswith("TYPE_")}


@pytest.mark.parametrize("full_name", MESSAGE_NAMES)
def test_message_schema_matches_protoc(pb2: SimpleNamespace, full_name: str) -> None:
    desc = pb2.connection.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
    cls = bp_class(full_name)
    metas = {m.number: (n, m) for n, m in cls._betterproto.meta_by_field_name.items()}
    assert sorted(metas) == sorted(f.number for f in desc.fields), "field numbers differ"
    by_field, problems = cls._betterproto.cls_by_field, []
    for f in desc.fields:
        name, meta = metas[f.number]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key, val = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            got = (meta.proto_type, *(m.proto_type for m in meta.map_meta))
            want = ("map", PB_TYPE[key.type], PB_TYPE[val.type])
            field, target = f"{name}.value", val
        else:
            got, want = (meta.proto_type, bool(meta.repeated)), (PB_TYPE[f.type], f.is_repeated)
            field, target = name, f
        # the class the value decodes to (a well-known type held as a Python value: its wrapper)
        elem = meta.unwrap() if meta.unwrap is not None else by_field.get(field)
        if got != want:
            problems.append(f"{field} (#{f.number}): betterproto2 {got} vs protoc {want}")
        if target.message_type is not None and elem is not bp_class(target.message_type.full_name):
            problems.append(f"{field}: class {elem} vs {target.message_type.full_name}")
        if target.enum_type is not None:
            pb_values = {v.name: v.number for v in target.enum_type.values}
            if {e.name: e.value for e in elem} != pb_values:
                problems.append(f"{field}: {elem} has not {target.enum_type.full_name}'s values")
    assert not problems, "\n".join(problems)


def test_schema_covers_every_message_and_enum(pb2: SimpleNamespace) -> None:
    """Every protoc message has a betterproto2 class and vice versa, and every enum on both sides
    is the type of some field, so the per-message test above compares its values."""
    descs = [m for fd in all_files(pb2) for m in walk_messages(fd.message_types_by_name.values())]
    assert sorted(m.full_name for m in descs) == MESSAGE_NAMES
    assert set(default_message_pool.url_to_type.values()) == defined(betterproto2.Message)
    declared = {e.full_name for fd in all_files(pb2) for e in fd.enum_types_by_name.values()}
    declared |= {e.full_name for m in descs for e in m.enum_types}
    pb_used, bp_used = set(), set()
    for m in descs:
        cls = bp_class(m.full_name)
        for name, meta in cls._betterproto.meta_by_field_name.items():
            if meta.proto_type == "enum":
                bp_used.add(cls._betterproto.cls_by_field[name])
        pb_used |= {f.enum_type.full_name for f in m.fields if f.enum_type is not None}
    assert pb_used == declared
    assert bp_used == defined(betterproto2.Enum)


# ------------------------------------------------------------------------------ 4. imports
def run_python(code: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-W", "error", "-X", "dev", "-c", code]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


def test_every_generated_module_imports_cleanly() -> None:
    res = run_python(
        "import importlib, pkgutil, trionsm.api as a\n"
        "for m in pkgutil.walk_packages(a.__path__, 'trionsm.api.'):\n"
        "    print(importlib.import_module(m.name).__name__)\n"
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    api = ROOT / "trionsm" / "api"
    files = [p.relative_to(api).with_suffix("").parts for p in api.rglob("*.py")]
    modules = {".".join(("trionsm.api", *p)).removesuffix(".__init__") for p in files}
    assert set(res.stdout.split()) == modules - {"trionsm.api"}


def test_api_imports_neither_grpcio_nor_protobuf() -> None:
    res = run_python(
        "import sys, trionsm.api.connection, trionsm.api.networkservice, trionsm.api.registry\n"
        "import trionsm.api.ipam, trionsm.api.grpc.health.v1, trionsm.api.google.protobuf\n"
        "bad = ('grpc', 'google.protobuf')\n"
        "print(*[m for m in sys.modules if m in bad or m.startswith(tuple(b + '.' for b in bad))])"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [], f"imported: {res.stdout}"
