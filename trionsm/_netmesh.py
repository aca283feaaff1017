"""A mesh of real processes in network namespaces: DESIGN §7's "process" topology on one host.

Each node is a network namespace on a test bridge, running its roles as processes; endpoints
and clients are processes in pod namespaces of their own::

    tnsm-<t>-br       br0 169.254.200.254/24   the nodes' network; the registry serves here (:5002)
     ├─ veth ── tnsm-<t>-node-1   eth0 169.254.200.1/24   trionsm node (nsmgr :5001) + forwarder
     └─ veth ── tnsm-<t>-node-2   eth0 169.254.200.2/24   trionsm node (nsmgr :5001, forwarder)
    tnsm-<t>-<pod>    one per NSE (its ICMP responder's ends) and per NSC (its interface)

Nothing is routed out: the addresses are link-local and live only in these namespaces. Each
node's unix sockets are in its own directory of one temporary directory
(``/tmp/trionsm-XXXX/node-1/nsm.io.sock``); workloads reach their node's nsmgr there (a unix
socket is a path, not an address of a namespace), nsmgrs reach the registry and each other over
TCP on the bridge, and forwarders carry remote KERNEL wires over VXLAN between the nodes'
bridge addresses. A node is a ``trionsm node`` process (nsmgr, admin service and, unless the
forwarder is external, the forwarder in one supervision tree); an external forwarder is a
``trionsm forwarder`` process of its own in the node's namespace.

Processes are run and restarted through :class:`~trionsm._processes.ProcessMesh` (``ip netns
exec`` execs, so each role's PID is the one signalled). Every namespace, PID (with its start time)
and path is recorded in an :class:`Inventory` as it is made; leaving :func:`open_netmesh` stops
the processes (clients first), lists the wires left in the mesh's namespaces and the interfaces
left in the nodes' (a half-removed vxlan tunnel), deletes the namespaces by their exact names and
removes the directory. :func:`find_leaks` then checks the inventory against the host: namespaces
that still exist, links with a ``trionsm:`` alias of the mesh's forwarders in the host's own
namespace, processes still alive, paths still present.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from trionsm._namespaces import create_netns, delete_netns, netns_exists, netns_url
from trionsm._processes import ProcessMesh, RoleProcess, aliased_links, links, open_process_mesh

__all__ = [
    "BRIDGE_ADDRESS",
    "Inventory",
    "NetMesh",
    "Node",
    "Pod",
    "find_leaks",
    "link_index",
    "open_netmesh",
    "process_start_time",
]

BRIDGE_ADDRESS = "169.254.200.254"
"""The bridge namespace's address: the registry listens here."""
REGISTRY_PORT = 5002
NSMGR_PORT = 5001
_PREFIX_LENGTH = 24


@attrs.define(eq=False)
class Inventory:
    """Everything a mesh made, by exact name: what :func:`find_leaks` checks.

    Attributes:
        namespaces: namespace names (``/run/netns/<name>``); processes: PID -> start time (clock
            ticks since boot, ``/proc/<pid>/stat`` field 22: a reused PID does not match); paths:
            files and directories; owners: the forwarder names the mesh's wire aliases carry.
    """

    namespaces: list[str] = attrs.field(factory=list)
    processes: dict[int, int] = attrs.field(factory=dict)
    paths: list[Path] = attrs.field(factory=list)
    owners: list[str] = attrs.field(factory=list)
    unclean: list[str] = attrs.field(factory=list)
    """What the teardown found wrong: a role that did not stop cleanly, a wire or an interface
    left in the mesh's namespaces before they were deleted (``left behind: ...``)."""


@attrs.frozen
class Node:
    """A node: its namespace, bridge address and socket directory, and the names of its roles."""

    name: str
    netns: str
    address: str
    directory: Path
    external: bool
    """Whether its forwarder is a process of its own (role :attr:`forwarder`)."""

    @property
    def nsmgr(self) -> str:
        """Its nsmgr's name (a path segment)."""
        return f"nsmgr-{self.name}"

    @property
    def forwarder(self) -> str:
        """Its forwarder's name (a path segment, the owner in its wires' aliases)."""
        return f"forwarder-{self.name}"

    @property
    def nsmgr_url(self) -> str:
        """Where the node's workloads reach its nsmgr (its unix socket, NSM's name)."""
        return f"unix://{self.directory / 'nsm.io.sock'}"

    @property
    def public_url(self) -> str:
        """Where other nodes reach its nsmgr (TCP on the bridge)."""
        return f"tcp://{self.address}:{NSMGR_PORT}"


@attrs.frozen
class Pod:
    """A workload: its process's role name, its namespace, and the node it belongs to."""

    name: str
    netns: str
    node: Node

    @property
    def netns_url(self) -> str:
        return netns_url(self.netns)


class NetMesh:
    """A running namespace mesh (see :func:`open_netmesh`)."""

    def __init__(self, processes: ProcessMesh, token: str, inventory: Inventory) -> None:
        self.processes = processes
        self.token = token
        self.inventory = inventory
        self.bridge = f"tnsm-{token}-br"
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}
        self.files: list[Path] = []
        """Files the mesh wrote (node configs), removed once the processes stopped."""
        self.registry_url = f"tcp://{BRIDGE_ADDRESS}:{REGISTRY_PORT}"
        inventory.paths.append(processes.directory)

    def __getitem__(self, name: str) -> RoleProcess:
        return self.processes[name]

    # -- namespaces ------------------------------------------------------------------------------

    async def _namespace(self, suffix: str) -> str:
        """Make namespace ``tnsm-<token>-<suffix>`` with ``lo`` up, recorded for deletion."""
        name = f"tnsm-{self.token}-{suffix}"
        self.inventory.namespaces.append(name)
        # (recorded where the process mesh deletes it by name on exit, before ip runs)
        await create_netns(name, into=self.processes.namespaces)
        await _ip("-n", name, "link", "set", "lo", "up")
        return name

    async def add_bridge(self) -> None:
        """The nodes' network: a bridge ``br0`` with :data:`BRIDGE_ADDRESS` in its namespace."""
        await self._namespace("br")
        await _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        await _ip("-n", self.bridge, "addr", "add", f"{BRIDGE_ADDRESS}/{_PREFIX_LENGTH}",
                  "dev", "br0")  # fmt: skip
        await _ip("-n", self.bridge, "link", "set", "br0", "up")

    async def _plug(self, netns: str, port: str, address: str) -> None:
        """Join ``netns`` to the bridge: ``eth0`` with ``address`` there, ``port`` on ``br0``."""
        await _ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                  "netns", self.bridge)  # fmt: skip
        await _ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
        await _ip("-n", netns, "addr", "add", f"{address}/{_PREFIX_LENGTH}", "dev", "eth0")
        await _ip("-n", netns, "link", "set", "eth0", "up")

    # -- processes -------------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        args: list[str],
        *,
        netns: str,
        sockets: list[Path] | None = None,
        ready: str = "serving ",
    ) -> RoleProcess:
        """Start role ``name`` (``trionsm <args>``) inside namespace ``netns``; ready as in
        :meth:`ProcessMesh.start`."""
        self.inventory.paths += sockets or []
        try:
            role = await self.processes.start(
                name, args, sockets=sockets or [], ready=ready, netns=netns
            )
        finally:
            self._record(name)
        return role

    def _record(self, name: str) -> None:
        role = self.processes.roles.get(name)
        for pid in role.pids if role is not None else []:
            if pid not in self.inventory.processes:
                self.inventory.processes[pid] = process_start_time(pid) or 0

    async def kill(self, name: str) -> int:
        """SIGKILL role ``name`` (no cleanup: sockets and wires stay); its exit status."""
        return await self.processes.kill(name)

    async def restart(self, name: str) -> RoleProcess:
        """Start role ``name`` again in its namespace, on the same sockets and arguments."""
        try:
            return await self.processes.restart(name)
        finally:
            self._record(name)

    async def kill_pod(self, name: str) -> int:
        """A pod dies: SIGKILL its process, then delete its namespace (its interfaces go with it,
        and the veth peers of those: nothing of the mesh keeps a deleted namespace alive). The
        process's exit status."""
        status = await self.kill(name)
        await delete_netns(self.pods[name].netns)
        return status

    # -- roles -----------------------------------------------------------------------------------

    async def add_registry(self) -> RoleProcess:
        """The registry (memory store) on the bridge, at :attr:`registry_url`."""
        args = ["registry", "--name", "registry", "--listen", self.registry_url]
        return await self.start("registry", args, netns=self.bridge)

    async def add_node(self, index: int, *, external_forwarder: bool = False) -> Node:
        """Node ``node-<index>``: its namespace on the bridge (``169.254.200.<index>``), its
        socket directory and its processes (see :func:`start_node`)."""
        name = f"node-{index}"
        netns = await self._namespace(name)
        address = f"169.254.200.{index}"
        await self._plug(netns, name, address)
        directory = self.processes.directory / name
        directory.mkdir()
        self.inventory.paths.append(directory)
        node = Node(name, netns, address, directory, external_forwarder)
        self.nodes[name] = node
        self.inventory.owners.append(node.forwarder)
        await start_node(self, node)
        return node

    async def add_endpoint(
        self, name: str, service: str, *, node: str, cidr: str, mtu: int | None = None
    ) -> Pod:
        """An ICMP-responder NSE serving ``service`` in a pod of its own on ``node``, with NSM's
        strict IPAM policy (a client healed onto it gets its addresses only)."""
        pod = await self._pod(name, node)
        sock = pod.node.directory / f"{name}.sock"
        args = ["nse", "--name", name, "--service", service, "--cidr", cidr, "--netns", pod.netns,
                "--listen", f"unix://{sock}", "--nsmgr", pod.node.nsmgr_url,
                "--ipam-policy", "strict"]  # fmt: skip
        args += ["--mtu", str(mtu)] if mtu is not None else []
        await self.start(name, args, netns=pod.netns, sockets=[sock])
        return pod

    async def add_nsc(
        self,
        name: str,
        url: str,
        *,
        node: str,
        liveness_interval: str = "100ms",
        liveness_timeout: str = "500ms",
    ) -> Pod:
        """An NSC in a pod of its own on ``node``, its interface in that pod, printing its events
        as JSON lines; ready once it printed ``connected``."""
        pod = await self._pod(name, node)
        args = ["nsc", url, "--nsmgr", pod.node.nsmgr_url, "--name", name, "--json",
                "--liveness-interval", liveness_interval,
                "--liveness-timeout", liveness_timeout]  # fmt: skip
        await self.start(name, args, netns=pod.netns, ready='{"event": "connected"')
        return pod

    async def _pod(self, name: str, node: str) -> Pod:
        pod = Pod(name, await self._namespace(name), self.nodes[node])
        self.pods[name] = pod
        return pod

    async def node_interfaces(self) -> list[str]:
        """Interfaces in the nodes' namespaces besides ``lo`` and ``eth0`` (a vxlan tunnel left
        behind), as ``<node>: <interface>``."""
        found = []
        for node in self.nodes.values():
            if netns_exists(node.netns):
                found += [
                    f"{node.name}: {link['ifname']}"
                    for link in await links(node.netns)
                    if link["ifname"] not in ("lo", "eth0")
                ]
        return found


async def start_node(mesh: NetMesh, node: Node) -> None:
    """Start ``node``'s processes in its namespace: ``trionsm node`` (its nsmgr on NSM's socket
    for its workloads and on TCP on the bridge for other nodes, the mesh's registry, its admin
    service) with its forwarder inside or, ``external``, a ``trionsm forwarder`` process beside
    it; the forwarder programs KERNEL and NOOP, and VXLAN from the node's bridge address."""
    directory = node.directory
    sockets = [directory / "nsm.io.sock", directory / "admin.sock", directory / "forwarder.sock"]
    config = directory.parent / f"{node.name}.toml"  # (not in its directory: sockets only)
    config.write_text(f'[forwarder]\ntunnel_ip = "{node.address}"\n')
    mesh.files.append(config)
    mesh.inventory.paths.append(config)
    mode = "external" if node.external else "internal"
    args = ["node", "--config", str(config), "--name", node.name, "--dir", str(directory),
            "--listen", node.nsmgr_url, "--listen", node.public_url,
            "--registry", mesh.registry_url, "--forwarder", mode]  # fmt: skip
    own = sockets[:2] if node.external else sockets  # (an external forwarder has its own)
    await mesh.start(node.name, args, netns=node.netns, sockets=own)
    if node.external:
        args = ["forwarder", "--name", node.forwarder, "--listen", f"unix://{sockets[2]}",
                "--nsmgr", node.nsmgr_url, "--mechanism", "kernel", "--mechanism", "noop",
                "--tunnel-ip", node.address]  # fmt: skip
        await mesh.start(node.forwarder, args, netns=node.netns, sockets=sockets[2:])


@asynccontextmanager
async def open_netmesh(
    inventory: Inventory | None = None,
    *,
    start_timeout: float = 30.0,
    stop_grace: float = 10.0,
) -> AsyncIterator[NetMesh]:
    """An empty namespace mesh (call :meth:`NetMesh.add_bridge` first); torn down on exit.

    On exit (shielded, even when cancelled) the processes stop (NSCs first, SIGKILL after
    ``stop_grace``) in dependency order, the node configs are removed, wires left in the mesh's
    namespaces and interfaces left in its nodes' are listed, the namespaces are deleted by exact
    name and the directory removed; what went wrong is appended to ``inventory.unclean``.
    ``inventory`` (given, or a new one: :attr:`NetMesh.inventory`) records everything made, for
    :func:`find_leaks` afterwards.
    """
    inventory = inventory if inventory is not None else Inventory()
    token = secrets.token_hex(3)
    unclean: list[str] = []
    try:
        async with open_process_mesh(
            kernel=True, start_timeout=start_timeout, stop_grace=stop_grace
        ) as processes:
            unclean = processes.unclean
            mesh = NetMesh(processes, token, inventory)
            try:
                yield mesh
            finally:
                with trio.CancelScope(shield=True):
                    await _stop_roles(processes)
                    for path in mesh.files:
                        path.unlink(missing_ok=True)
                    unclean += [f"left behind: {i}" for i in await mesh.node_interfaces()]
    finally:
        inventory.unclean += unclean


async def _stop_roles(processes: ProcessMesh) -> None:
    """Stop the roles in dependency order: NSCs, NSEs, forwarders, nodes, the registry (so each
    unregisters and closes through peers still there)."""
    order = ("nsc", "nse", "forwarder", "node", "nsmgr", "registry")
    for kind in order:
        async with trio.open_nursery() as nursery:
            for role in processes.roles.values():
                if role.args[0] == kind and role.running:
                    nursery.start_soon(processes.stop, role.name)


async def find_leaks(inventory: Inventory) -> list[str]:
    """What of ``inventory`` is still on the host, one line each: namespaces that exist, links
    with a ``trionsm:`` alias in them or, owned by one of ``owners``, in the host's namespace,
    processes alive (a zombie counts), paths that exist. Empty: nothing left."""
    found = []
    for name in inventory.namespaces:
        if netns_exists(name):
            found.append(f"namespace {name}")
            found += [f"link {name}: {link}" for link in await aliased_links(name)]
    found += [f"link (host): {link}" for link in await aliased_links(None, inventory.owners)]
    for pid, started in inventory.processes.items():
        if process_start_time(pid) == started:
            found.append(f"process {pid}")
    found += [f"path {path}" for path in inventory.paths if path.exists()]
    return found


async def link_index(netns: str, ifname: str) -> int | None:
    """The ifindex of interface ``ifname`` in namespace ``netns``; None when there is none."""
    for link in await links(netns):
        if link["ifname"] == ifname:
            return int(str(link["ifindex"]))
    return None


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


async def _ip(*args: str) -> None:
    await trio.run_process(["ip", *args], capture_stderr=True)
