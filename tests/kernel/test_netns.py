"""Namespace URLs: file:// paths, inode:// resolution by scanning, and the typed errors."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from tests.netns import Host
from trionsm._namespaces import create_netns, delete_namespaces, netns_exists
from trionsm.errors import InvalidArgument, NotFound
from trionsm.kernel import inode_url, resolve_namespace
from trionsm.kernel._netns import check_named, is_named

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


async def test_file_url_of_a_named_namespace(host: Host) -> None:
    url = await host.netns()
    namespace = await resolve_namespace(url, hop="test")
    stat = os.stat(url.removeprefix("file://"))
    assert namespace.key == (stat.st_dev, stat.st_ino)
    assert namespace.path == url.removeprefix("file://")
    assert namespace.inode_url == f"inode://{stat.st_dev}/{stat.st_ino}"
    assert inode_url(namespace.path) == namespace.inode_url == inode_url(url)


async def test_inode_url_resolves_to_the_same_namespace(host: Host) -> None:
    url = await host.netns()
    named = await resolve_namespace(url)
    found = await resolve_namespace(named.inode_url)
    assert found.key == named.key
    assert found.url == named.inode_url
    assert found.path.startswith(("/run/netns/", "/var/run/netns/"))


async def test_inode_url_of_an_unnamed_process_namespace() -> None:
    """A namespace only a process holds is found through /proc/<pid>/ns/net."""
    command = ["unshare", "--net", "sh", "-c", "echo ready; exec sleep 60"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(10):
            assert await process.stdout.receive_some() == b"ready\n"  # in its namespace now
        path = f"/proc/{process.pid}/ns/net"
        assert os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino
        namespace = await resolve_namespace(inode_url(path))
        assert namespace.path in (path, f"/proc/{process.pid}/task/{process.pid}/ns/net")
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def test_a_name_deleted_or_made_again_no_longer_names_the_namespace(host: Host) -> None:
    url = await host.netns()
    name = url.removeprefix("file:///run/netns/")
    namespace = await resolve_namespace(url)
    assert is_named(namespace)
    check_named(namespace, hop="test")
    await trio.run_process(["ip", "netns", "del", name])
    assert not is_named(namespace)
    with pytest.raises(NotFound, match=f"{url} is gone: cannot look at /run/netns/{name}"):
        check_named(namespace, hop="test")
    await trio.run_process(["ip", "netns", "add", name])
    assert not is_named(namespace)
    with pytest.raises(NotFound, match=f"/run/netns/{name} no longer names it") as caught:
        check_named(namespace, hop="test")
    assert caught.value.hop == "test"


async def test_self_is_pinned_to_this_process() -> None:
    namespace = await resolve_namespace("file:///proc/self/ns/net")
    assert namespace.path == f"/proc/{os.getpid()}/ns/net"
    here = os.stat("/proc/self/ns/net")
    assert namespace.key == (here.st_dev, here.st_ino)
    thread = await resolve_namespace("file:///proc/thread-self/ns/net")
    assert thread.key == namespace.key


async def test_missing_namespace_is_not_found() -> None:
    with pytest.raises(NotFound) as caught:
        await resolve_namespace("file:///run/netns/tnsm-does-not-exist", hop="forwarder@node-1")
    assert caught.value.hop == "forwarder@node-1"
    assert "tnsm-does-not-exist" in caught.value.reason


async def test_unknown_inode_is_not_found() -> None:
    with pytest.raises(NotFound, match="no namespace with that inode"):
        await resolve_namespace("inode://1/2")


async def test_files_that_are_not_network_namespaces(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(InvalidArgument, match="not a namespace file"):
        await resolve_namespace(f"file://{plain}")
    with pytest.raises(InvalidArgument, match="another kind of namespace"):
        await resolve_namespace("file:///proc/self/ns/uts")


@pytest.mark.parametrize(
    "url",
    [
        "/run/netns/x",
        "http://host/run/netns/x",
        "file://remote/run/netns/x",
        "file:relative",
        "inode://1",
        "inode://01/2",
        "inode://1/x",
        "inode://1/2?x=1",
        f"inode://{2**64}/1",
    ],
)
async def test_malformed_urls(url: str) -> None:
    with pytest.raises(InvalidArgument, match="network namespace"):
        await resolve_namespace(url, hop="test")


async def test_a_mesh_never_records_a_namespace_it_was_refused() -> None:
    """A name taken already is someone else's namespace: the mesh's teardown must not delete it."""
    name = f"tnsm-{secrets.token_hex(4)}"
    await trio.run_process(["ip", "netns", "add", name])
    try:
        made: list[str] = []
        with pytest.raises(subprocess.CalledProcessError):
            await create_netns(name, into=made)
        assert made == []
        with pytest.raises(subprocess.CalledProcessError):  # refused by ``ip`` itself
            await create_netns(f"{name}/x", into=made)
        assert made == []
        await delete_namespaces(made)  # the mesh's teardown
        assert netns_exists(name)
    finally:
        await trio.run_process(["ip", "netns", "del", name])


async def test_a_mesh_records_a_namespace_whose_making_was_cancelled() -> None:
    """Cancelled while ``ip`` may already have made it: recorded, so teardown deletes it."""
    name = f"tnsm-{secrets.token_hex(4)}"
    made: list[str] = []
    try:
        with trio.CancelScope() as scope:
            scope.cancel()
            await create_netns(name, into=made)
        assert made == [name]
    finally:
        await delete_namespaces([name])
    assert not netns_exists(name)
