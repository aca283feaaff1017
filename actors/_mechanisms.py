"""Mechanisms: NSM's type strings and parameter keys, constructors, negotiation (pure, no I/O).

A :class:`~trionsm.api.connection.Mechanism` says how one hop of a connection is carried:
``cls`` is :data:`LOCAL` between a workload (NSC or NSE) and its forwarder, :data:`REMOTE`
between forwarders; ``type`` is NSM's upper-case string (:data:`KERNEL`, :data:`VXLAN`, ...);
``parameters`` use NSM's keys (:class:`Param`), every value a string.

What this module does for the roles, as NSM's sdk elements do it:

* :func:`negotiate` is the server ``mechanisms`` element: the connection's own mechanism if it
  has one (a refresh), else the first of the caller's preferences whose type this hop supports.
  Unlike NSM's ``"cannot support any of the requested mechanism"``, a failure names the hop and
  both sides: what was offered and what this hop supports.
* :func:`filter_for_url` is ``filtermechanisms``: towards a local peer (unix, zmq+ipc, inode,
  inproc) keep the LOCAL preferences, towards anything else the REMOTE ones.
* :func:`translate_request` / :func:`translate_reply` are the forwarder's
  ``mechanismtranslation``: the outgoing request does not carry the incoming hop's mechanism,
  and the reply handed back upstream carries the incoming hop's mechanism again.

Nothing here mutates a message it receives: every result is a new message (nested messages that
are not changed may be shared, so treat results as read-only too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from trionsm.api.connection import Connection, Mechanism
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import FailedPrecondition, InvalidArgument
from trionsm.transport import Address, Scheme, parse_url

__all__ = [
    "DEFAULT_VXLAN_PORT",
    "IPSEC",
    "KERNEL",
    "LOCAL",
    "LOCAL_TYPES",
    "MAX_INTERFACE_NAME",
    "MEMIF",
    "NOOP",
    "REMOTE",
    "SRV6",
    "TYPES",
    "VFIO",
    "VLAN",
    "VXLAN",
    "WIREGUARD",
    "Param",
    "check_interface_name",
    "default_interface_name",
    "describe",
    "endpoint_interface_name",
    "filter_by_cls",
    "filter_for_url",
    "is_local_url",
    "kernel_mechanism",
    "negotiate",
    "noop_mechanism",
    "translate_reply",
    "translate_request",
    "vxlan_mechanism",
    "vxlan_port",
    "with_parameters",
]

# -- cls ----------------------------------------------------------------------------------------
LOCAL: Final = "LOCAL"
REMOTE: Final = "REMOTE"

# -- type ---------------------------------------------------------------------------------------
KERNEL: Final = "KERNEL"
MEMIF: Final = "MEMIF"
VFIO: Final = "VFIO"
NOOP: Final = "NOOP"
VXLAN: Final = "VXLAN"
WIREGUARD: Final = "WIREGUARD"
IPSEC: Final = "IPSEC"
VLAN: Final = "VLAN"
SRV6: Final = "SRV6"

TYPES: Final = frozenset({KERNEL, MEMIF, VFIO, NOOP, VXLAN, WIREGUARD, IPSEC, VLAN, SRV6})
"""Every mechanism type NSM defines."""
LOCAL_TYPES: Final = (KERNEL, MEMIF, VFIO, NOOP)
"""The types a workload asks for (cls LOCAL), in the order error messages list them."""

DEFAULT_VXLAN_PORT: Final = 4789
MAX_INTERFACE_NAME: Final = 15
"""Linux's limit on an interface name, in bytes (IFNAMSIZ 16 with the terminating NUL)."""
_MAX_VNI = 2**24 - 1
_IFNAME_RANDOM = string.ascii_lowercase + string.digits
_IFNAME_PREFIX = frozenset(string.ascii_letters + string.digits + "-_.")


class Param:
    """NSM's parameter keys (``mechanisms/common`` and the per-type packages)."""

    NAME: Final = "name"
    """Interface name (at most 15 bytes)."""
    INODE_URL: Final = "inodeURL"
    """The netns: ``file:///proc/<pid>/ns/net`` or ``inode://<dev>/<ino>``."""
    NETNS_INODE: Final = "netnsInode"
    SRC_IP: Final = "src_ip"
    DST_IP: Final = "dst_ip"
    SRC_PORT: Final = "src_port"
    DST_PORT: Final = "dst_port"
    ORIG_SRC_IP: Final = "orig_src_ip"
    ORIG_DST_IP: Final = "orig_dst_ip"
    VNI: Final = "vni"
    MTU: Final = "MTU"
    PCI_ADDRESS: Final = "pciAddress"
    TOKEN_ID: Final = "tokenID"
    SUPPORTS_VLAN: Final = "supportsVlan"
    VLAN: Final = "vlan"
    VLAN_ID: Final = "vlan-id"
    SOCKETFILE: Final = "socketfile"
    SRC_PUBLIC_KEY: Final = "src_public_key"
    DST_PUBLIC_KEY: Final = "dst_public_key"


def describe(mechanism: Mechanism | None) -> str:
    """``"KERNEL/LOCAL"``: a mechanism as error messages and logs show it."""
    if mechanism is None:
        return "(none)"
    return f"{mechanism.type or '(no type)'}/{mechanism.cls or '(no cls)'}"


def _describe_all(mechanisms: Iterable[Mechanism]) -> str:
    return ", ".join(describe(mechanism) for mechanism in mechanisms) or "nothing"


def check_interface_name(name: str, *, hop: str | None = None, service: str | None = None) -> None:
    """Raise InvalidArgument unless Linux accepts ``name`` for an interface.

    Linux's ``dev_valid_name``: 1 to 15 bytes, not ``.`` or ``..``, no ``/``, ``:`` or
    whitespace; control characters are refused too.
    """
    problem = None
    size = len(name.encode())
    if not name:
        problem = "is empty"
    elif size > MAX_INTERFACE_NAME:
        problem = f"is {size} bytes long; Linux allows at most {MAX_INTERFACE_NAME}"
    elif name in {".", ".."}:
        problem = "may not be '.' or '..'"
    else:
        bad = next((c for c in name if c in "/:" or c.isspace() or not c.isprintable()), None)
        if bad is not None:
            problem = f"contains {bad!r} (no '/', ':', whitespace or control characters)"
    if problem is not None:
        raise InvalidArgument(f"interface name {name[:40]!r} {problem}", hop=hop, service=service)


def default_interface_name(network_service: str, *, rng: random.Random | None = None) -> str:
    """NSM's default interface name: the service's first 10 characters, ``-``, random letters.

    The result is always 15 characters; characters of the service name other than ASCII letters,
    digits, ``-``, ``_`` and ``.`` are dropped first (``svc@domain`` loses its ``@``).

    Args:
        network_service: the requested service (``svc`` or ``svc@domain``).
        rng: the source of randomness (tests pass a seeded one); ``random`` by default.
    """
    prefix = "".join(c for c in network_service if c in _IFNAME_PREFIX)[:10] or "nsm"
    chooser = rng or random
    suffix = "".join(chooser.choice(_IFNAME_RANDOM) for _ in range(14 - len(prefix)))
    return f"{prefix}-{suffix}"


def endpoint_interface_name(connection_id: str) -> str:
    """The interface name an endpoint picks for its end of a KERNEL connection by default.

    ``nsm-`` and 11 hex digits of the SHA-1 of the endpoint's connection id: 15 characters, the
    same on every refresh and after an endpoint restart (the id is kept), distinct per connection.
    """
    return "nsm-" + hashlib.sha1(connection_id.encode()).hexdigest()[:11]


def _put(parameters: dict[str, str], key: str, value: str | int | None) -> None:
    if value is not None and value != "":
        parameters[key] = str(value)


def _check_range(what: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise InvalidArgument(f"{what} {value} is out of range {low}..{high}")


def kernel_mechanism(
    inode_url: str = "",
    interface: str = "",
    *,
    mtu: int | None = None,
    cls: str = LOCAL,
    extra: Mapping[str, str] | None = None,
) -> Mechanism:
    """A KERNEL mechanism: an interface in a network namespace.

    Args:
        inode_url: the netns (``file:///proc/<pid>/ns/net``, ``inode://dev/ino``); empty to let
            the forwarder fill it.
        interface: the interface name (checked with :func:`check_interface_name`); empty to let
            the next hop pick one.
        mtu: the MTU, if the caller wants one.
        cls: LOCAL (the usual case).
        extra: further parameters (``pciAddress``, ``supportsVlan``...), copied.

    Raises:
        InvalidArgument: a bad interface name or MTU.
    """
    if interface:
        check_interface_name(interface)
    _check_range("MTU", mtu, 68, 65535)
    parameters = dict(extra or {})
    _put(parameters, Param.INODE_URL, inode_url)
    _put(parameters, Param.NAME, interface)
    _put(parameters, Param.MTU, mtu)
    return Mechanism(cls=cls, type=KERNEL, parameters=parameters)


def noop_mechanism(cls: str = LOCAL) -> Mechanism:
    """A NOOP mechanism: no data plane for this hop (control-plane-only tests, vL3 helpers)."""
    return Mechanism(cls=cls, type=NOOP, parameters={})


def vxlan_mechanism(
    src_ip: str | None = None,
    dst_ip: str | None = None,
    *,
    src_port: int | None = None,
    dst_port: int | None = None,
    vni: int | None = None,
    mtu: int | None = None,
) -> Mechanism:
    """A VXLAN (REMOTE) mechanism. The client side fills ``src_*``, the server ``dst_*`` and VNI.

    Parameters left None are not set (NSM's default port is :data:`DEFAULT_VXLAN_PORT`).

    Raises:
        InvalidArgument: a port, VNI (24 bits) or MTU out of range.
    """
    _check_range("src_port", src_port, 0, 65535)
    _check_range("dst_port", dst_port, 0, 65535)
    _check_range("VNI", vni, 0, _MAX_VNI)
    _check_range("MTU", mtu, 68, 65535)
    parameters: dict[str, str] = {}
    _put(parameters, Param.SRC_IP, src_ip)
    _put(parameters, Param.DST_IP, dst_ip)
    _put(parameters, Param.SRC_PORT, src_port)
    _put(parameters, Param.DST_PORT, dst_port)
    _put(parameters, Param.VNI, vni)
    _put(parameters, Param.MTU, mtu)
    return Mechanism(cls=REMOTE, type=VXLAN, parameters=parameters)


def vxlan_port(
    parameters: Mapping[str, str], key: str, *, hop: str | None = None, service: str | None = None
) -> int:
    """The UDP port in ``parameters[key]`` (``src_port``/``dst_port``); absent or empty gives
    :data:`DEFAULT_VXLAN_PORT`, NSM's default.

    Raises:
        InvalidArgument: not a number in 1..65535, naming the key.
    """
    text = parameters.get(key, "").strip()
    if not text:
        return DEFAULT_VXLAN_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidArgument(
            f"VXLAN {key} {text[:20]!r} is not a port number in 1..65535", hop=hop, service=service
        )
    return int(text)


def with_parameters(mechanism: Mechanism, updates: Mapping[str, str]) -> Mechanism:
    """A copy of ``mechanism`` with ``updates`` merged into its parameters (the original kept)."""
    return dataclasses.replace(mechanism, parameters={**mechanism.parameters, **updates})


def _copy(mechanism: Mechanism) -> Mechanism:
    return with_parameters(mechanism, {})


def negotiate(
    connection_mechanism: Mechanism | None,
    preferences: Sequence[Mechanism],
    supported: Sequence[str],
    *,
    hop: str,
    service: str | None = None,
) -> Mechanism:
    """Pick this hop's mechanism, as NSM's server ``mechanisms`` element does.

    A connection that already has a mechanism (one with a type: a refresh or a heal) keeps it if
    this hop supports its type. Otherwise the first preference whose type is supported wins.

    Args:
        connection_mechanism: ``request.connection.mechanism``.
        preferences: ``request.mechanism_preferences``, in the caller's order.
        supported: the types this hop can provide (``[KERNEL, NOOP]``).
        hop: this hop's name, for the error.
        service: the network service, for the error.

    Returns:
        A copy of the chosen mechanism, safe to fill in with :func:`with_parameters`.

    Raises:
        FailedPrecondition: nothing offered is supported; the reason names what was offered and
            what ``hop`` supports.
    """
    supports = f"{hop} supports {', '.join(supported) or 'nothing'}"
    if connection_mechanism is not None and connection_mechanism.type:
        if connection_mechanism.type in supported:
            return _copy(connection_mechanism)
        reason = f"the connection's mechanism {describe(connection_mechanism)} is not supported"
        raise FailedPrecondition(f"{reason}; {supports}", hop=hop, service=service)
    for preference in preferences:
        if preference.type in supported:
            return _copy(preference)
    offered = f"offered {_describe_all(preferences)}"
    reason = f"cannot support any of the requested mechanisms: {offered}; {supports}"
    raise FailedPrecondition(reason, hop=hop, service=service)


def filter_by_cls(preferences: Iterable[Mechanism], cls: str) -> list[Mechanism]:
    """The preferences of class ``cls``, in order (the messages themselves, not copies)."""
    return [preference for preference in preferences if preference.cls == cls]


_LOCAL_SCHEMES: Final = frozenset({Scheme.UNIX, Scheme.ZMQ_IPC, Scheme.INODE, Scheme.INPROC})


def is_local_url(url: str | Address) -> bool:
    """Whether a peer at ``url`` is on this node: unix, zmq+ipc, inode and inproc URLs are.

    Raises:
        InvalidArgument: ``url`` is not a transport URL.
    """
    address = url if isinstance(url, Address) else parse_url(url)
    return address.scheme in _LOCAL_SCHEMES


def filter_for_url(
    preferences: Iterable[Mechanism], url: str | Address, *, local: bool | None = None
) -> list[Mechanism]:
    """NSM's ``filtermechanisms``: keep LOCAL preferences towards a local peer, REMOTE otherwise.

    Args:
        preferences: the mechanism preferences about to be sent.
        url: the next hop's URL; its scheme decides (see :func:`is_local_url`).
        local: overrides the scheme when the caller knows better (an in-process mesh whose
            nodes all talk over ``inproc://`` says ``local=False`` between forwarders).
    """
    is_local = is_local_url(url) if local is None else local
    return filter_by_cls(preferences, LOCAL if is_local else REMOTE)


def translate_request(
    request: NetworkServiceRequest,
    *,
    mechanism: Mechanism | None,
    preferences: Sequence[Mechanism] = (),
) -> NetworkServiceRequest:
    """The forwarder's outgoing request: the incoming hop's mechanism and preferences replaced.

    Args:
        request: the request as the forwarder received it (not changed).
        mechanism: the outgoing hop's mechanism from an earlier reply (None on a first request).
        preferences: the forwarder's own preferences for the outgoing hop.
    """
    connection = request.connection or Connection()
    return dataclasses.replace(
        request,
        connection=dataclasses.replace(connection, mechanism=mechanism),
        mechanism_preferences=list(preferences),
    )


def translate_reply(reply: Connection, mechanism: Mechanism | None) -> Connection:
    """The connection handed back upstream: ``reply`` with the incoming hop's ``mechanism``."""
    return dataclasses.replace(reply, mechanism=mechanism)
