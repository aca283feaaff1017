"""A node in this process (``serve_node``) and its admin service, over real unix sockets.

The endpoint and the client run in the test process too (noop mechanism), so the admin views
can be checked against the hops' own state; ``trionsm node`` as a real process is in
tests/test_node.py. Real clock: every wait is on a condition, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from trionsm._cli.config import load_config
from trionsm.actors._mechanisms import KERNEL, NOOP
from trionsm.actors.client import EventKind, open_connection
from trionsm.actors.endpoint import EndpointHandle, serve_endpoint
from trionsm.actors.lease import serve_service_lease
from trionsm.actors.node import NodeConfig, NodeHandle, serve_node
from trionsm.api.registry import NetworkService
from trionsm.api.trionsm.admin.v1 import ConnectionsRequest, CrashRequest, TreeRequest
from trionsm.errors import InvalidArgument, NotFound
from trionsm.transport import Client, open_client

BOUND = 60.0
CIDR = "169.254.120.0/24"


def node_config(directory: Path, **forwarder: object) -> NodeConfig:
    return load_config(
        None,
        {
            "": {"name": "n1", "dir": directory},
            "nsmgr": {"listen": (f"unix://{directory}/nsm.io.sock",)},
            "forwarder": {"mechanisms": ("NOOP",), **forwarder},
        },
    )


@asynccontextmanager
async def running_node(
    directory: Path, config: NodeConfig | None = None
) -> AsyncIterator[tuple[NodeHandle, EndpointHandle, Client, tuple[trio.CancelScope, trio.Event]]]:
    """The node, an endpoint of ``svc`` registered at it, a client to the node's admin service,
    and the node's cancel scope (cancelling it stops the node alone) with an event set once the
    node has stopped."""
    config = config or node_config(directory)
    node_stopped = trio.Event()
    node_scope = trio.CancelScope()

    async def run_node(*, task_status: trio.TaskStatus[NodeHandle]) -> None:
        try:
            with node_scope:
                await serve_node(config, task_status=task_status)
        finally:
            node_stopped.set()

    async def run_endpoint(nsmgr: str, *, task_status: trio.TaskStatus[EndpointHandle]) -> None:
        async with trio.open_nursery() as inner:
            await inner.start(serve_service_lease, nsmgr, NetworkService(name="svc"))
            url = f"unix://{directory}/nse.sock"
            start = partial(serve_endpoint, "nse-1", url, services="svc", cidr=CIDR)
            task_status.started(await inner.start(partial(start, registry=nsmgr)))

    async with trio.open_nursery() as nursery:
        node: NodeHandle = await nursery.start(run_node)
        endpoint: EndpointHandle = await nursery.start(run_endpoint, node.urls[0])
        async with open_client(node.admin_urls[0], default_timeout=10) as admin:
            yield node, endpoint, admin, (node_scope, node_stopped)
        nursery.cancel_scope.cancel()


async def test_tree_lists_every_role_by_path(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with running_node(tmp_path) as (node, _, admin, _):
            tree = await admin.admin.tree(TreeRequest())
            assert tree.node == "n1"
            top = [a.path for a in tree.actors if a.path.count("/") == 1]
            assert top == ["node/registry", "node/nsmgr", "node/forwarder", "node/admin"]
            rows = {a.path: a for a in tree.actors}
            assert (rows["node/forwarder/lease"].id, rows["node/forwarder/lease"].depth) == (
                "lease",
                1,
            )
            registry_urls = [a for a in tree.actors if a.id.startswith("listen:inproc://")]
            assert [a.depth for a in registry_urls] == [1]  # an id with "/" in it
            assert (rows["node/forwarder"].kind, rows["node/forwarder"].strategy) == (
                "supervisor",
                "rest_for_one",
            )
            assert {a.status for a in tree.actors} == {"running"}
            assert [path for path, _ in node.supervisor.tree().walk()] == [
                a.path for a in tree.actors
            ]


async def test_connections_show_each_hop_view(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with (
            running_node(tmp_path) as (node, _, admin, _),
            open_connection("noop://svc/nsm-1", nsmgr=node.urls[0]) as conn,
        ):
            assert conn.connection is not None
            rows = (await admin.admin.connections(ConnectionsRequest())).connections
            assert [(r.role, r.hop) for r in rows] == [
                ("nsmgr", "nsmgr-n1"),
                ("forwarder", "forwarder-n1"),
            ]
            assert conn.connection.path is not None
            names = [s.name for s in conn.connection.path.path_segments]
            for index, row in enumerate(rows, start=1):
                assert row.path == names
                assert row.id == conn.connection.path.path_segments[index].id
                assert (row.network_service, row.state, row.endpoint) == ("svc", "UP", "nse-1")
                assert row.expires == conn.connection.path.path_segments[index].expires
                assert row.mechanism == "NOOP"


async def test_crash_of_the_forwarder_restarts_it_and_the_client_heals(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with (
            running_node(tmp_path) as (node, endpoint, admin, _),
            open_connection("noop://svc/nsm-1", nsmgr=node.urls[0]) as conn,
        ):
            before = node.forwarder
            reply = await admin.admin.crash(CrashRequest(path="node/forwarder", reason="drill"))
            assert (reply.path, reply.restarts) == ("node/forwarder", 0)
            healed = await conn.wait_for(EventKind.HEALED)
            assert conn.connection is not None
            assert conn.connection.path is not None
            names = [s.name for s in conn.connection.path.path_segments]
            assert names[1:] == ["nsmgr-n1", "forwarder-n1", "nse-1"], healed
            assert node.forwarder is not None
            assert node.forwarder is not before
            rows = {a.path: a for a in (await admin.admin.tree(TreeRequest())).actors}
            assert rows["node/forwarder"].restarts == 1
            assert "Crashed" in rows["node/forwarder"].last_exit
            assert "drill" in rows["node/forwarder"].last_exit
            assert endpoint.endpoint.counts.unique_requests == 1  # the same connection healed


async def test_crash_refuses_unknown_and_empty_paths(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with running_node(tmp_path) as (_, _, admin, _):
            with pytest.raises(NotFound, match=r"no actor at path 'node/nope'"):
                await admin.admin.crash(CrashRequest(path="node/nope"))
            with pytest.raises(InvalidArgument, match="needs the path"):
                await admin.admin.crash(CrashRequest())


async def test_a_stop_closes_connections_downstream_and_removes_sockets(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with (
            running_node(tmp_path) as (node, endpoint, _, (stop, stopped)),
            open_connection("noop://svc/nsm-1", nsmgr=node.urls[0]) as conn,
        ):
            assert conn.connection is not None
            assert len(endpoint.endpoint.hub) == 1
            stop.cancel()
            await stopped.wait()
            await conn.wait_for(EventKind.DOWN)
            # The endpoint saw the forwarder's Close: the node closed its connections first.
            assert len(endpoint.endpoint.hub) == 0
            assert endpoint.endpoint.counts.closes == 1
            # The node's sockets are gone (the endpoint's is still there).
            assert [p.name for p in await trio.Path(tmp_path).iterdir()] == ["nse.sock"]


async def test_a_stop_keeping_the_dataplane_closes_nothing(tmp_path: Path) -> None:
    config = attrs.evolve(node_config(tmp_path), restart_keep_dataplane=True)
    with trio.fail_after(BOUND):
        async with (
            running_node(tmp_path, config) as (node, endpoint, _, (stop, stopped)),
            open_connection("noop://svc/nsm-1", nsmgr=node.urls[0]) as conn,
        ):
            stop.cancel()
            await stopped.wait()
            await conn.wait_for(EventKind.DOWN)
            # Left for the next run of the node to adopt (the endpoint expires it otherwise).
            assert len(endpoint.endpoint.hub) == 1
            assert endpoint.endpoint.counts.closes == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel executor needs root (netlink)")
async def test_a_crashed_kernel_executor_restarts_the_forwarder_with_it(tmp_path: Path) -> None:
    config = node_config(tmp_path, mechanisms=(KERNEL, NOOP))
    with trio.fail_after(BOUND):
        async with (
            running_node(tmp_path, config) as (node, _, admin, _),
            open_connection("noop://svc/nsm-1", nsmgr=node.urls[0]) as conn,
        ):
            rows = [a.path for a in (await admin.admin.tree(TreeRequest())).actors]
            assert rows[0] == "node/kernel"
            before = node.forwarder
            await admin.admin.crash(CrashRequest(path="node/kernel"))
            await conn.wait_for(EventKind.HEALED)  # through the restarted forwarder
            assert node.forwarder is not None
            assert node.forwarder is not before
            restarts = {a.path: a.restarts for a in (await admin.admin.tree(TreeRequest())).actors}
            assert (restarts["node/kernel"], restarts["node/forwarder"]) == (1, 1)
            assert restarts["node/nsmgr"] == 0


async def test_a_crashed_nsmgr_restarts_on_the_ports_it_had(tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "": {"name": "n1", "dir": tmp_path},
            "nsmgr": {"listen": (f"unix://{tmp_path}/nsm.io.sock", "tcp://127.0.0.1:0")},
            "forwarder": {"mechanisms": ("NOOP",)},
        },
    )
    with trio.fail_after(BOUND):
        async with (
            running_node(tmp_path, config) as (node, _, admin, _),
            open_connection("noop://svc/nsm-1", nsmgr=node.urls[1]) as conn,  # over TCP
        ):
            assert node.urls[1] != "tcp://127.0.0.1:0"
            await admin.admin.crash(CrashRequest(path="node/nsmgr"))
            await conn.wait_for(EventKind.HEALED)
            assert node.nsmgr is not None
            assert node.nsmgr.urls == node.urls  # the same socket and the same TCP port
