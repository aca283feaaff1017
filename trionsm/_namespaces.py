"""Named network namespaces that a mesh makes for itself and deletes by their exact names.

The in-process mesh (:mod:`trionsm.scenario`) and the process mesh (:mod:`trionsm._processes`)
both make namespaces with ``ip netns add`` under ``/run/netns`` and must delete exactly those
when they exit, never others that match a pattern. Each keeps the names it made in a list; the
functions here make a namespace and record its name in such a list (before ``ip`` runs, so a
namespace whose making was cancelled half-way is still deleted; a name ``ip`` refused, taken by
someone else, is dropped again), delete by exact name, and say which of the recorded names still
exist.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path

import trio

NETNS_DIR = Path("/run/netns")
"""Where ``ip netns`` keeps its named namespaces."""
_URL_PREFIX = f"file://{NETNS_DIR}/"


def netns_url(name: str) -> str:
    """The ``file:///run/netns/<name>`` URL of the named namespace ``name``."""
    return f"{_URL_PREFIX}{name}"


def netns_name(url: str) -> str:
    """The name in a ``file:///run/netns/<name>`` URL (any other string is returned as it is)."""
    return url.removeprefix(_URL_PREFIX)


async def create_netns(name: str, *, into: list[str] | None = None) -> None:
    """Make the namespace ``name`` (``ip netns add``), recording ``name`` in ``into``.

    The name is appended before ``ip`` runs, so a creation cancelled half-way is still deleted
    with the rest; a refused one is dropped again, so a namespace of that name made by someone
    else is never deleted for us. A name taken already is refused without running ``ip``.
    Blocks until ``ip`` has returned.

    Raises:
        subprocess.CalledProcessError: ``ip`` refused (not root, the name taken); its stderr
            says why.
    """
    command = ["ip", "netns", "add", name]
    if netns_exists(name):  # someone else's: never recorded, not even for a moment
        raise subprocess.CalledProcessError(1, command, stderr=b"the name is taken already")
    if into is not None:
        into.append(name)
    try:
        await trio.run_process(command, capture_stderr=True)
    except subprocess.CalledProcessError:  # not made by us: not ours to delete
        if into is not None:
            del into[len(into) - 1 - into[::-1].index(name)]
        raise


async def make_netns(prefix: str = "tnsm-", *, into: list[str] | None = None) -> str:
    """Make a namespace ``<prefix><8 random hex digits>`` as :func:`create_netns` does; its name.

    Raises:
        subprocess.CalledProcessError: ``ip`` refused (not root, a name taken).
    """
    name = f"{prefix}{secrets.token_hex(4)}"
    await create_netns(name, into=into)
    return name


async def delete_netns(name: str) -> None:
    """Delete the namespace ``name`` by its exact name; one gone already is fine.

    Shielded from cancellation: once called, the deletion finishes.
    """
    with trio.CancelScope(shield=True):
        if netns_exists(name):
            await trio.run_process(
                ["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL
            )


async def delete_namespaces(names: Iterable[str]) -> None:
    """:func:`delete_netns` each of ``names`` in turn (shielded, as it is)."""
    with trio.CancelScope(shield=True):
        for name in names:
            await delete_netns(name)


def netns_exists(name: str) -> bool:
    """Whether the named namespace ``name`` exists (``/run/netns/<name>``)."""
    return (NETNS_DIR / name).exists()


def remaining(names: Iterable[str]) -> list[str]:
    """Those of ``names`` whose namespaces still exist, in order."""
    return [name for name in names if netns_exists(name)]
