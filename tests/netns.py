"""Network namespaces for one test, and ``ip`` (iproute2) to look into them independently of the
code under test: the ``host`` fixture of tests/conftest.py yields a :class:`Host`.

Namespaces are named ``tnsm-<random>`` and deleted by those exact names when the test ends.
Addresses in the tests that use them come from 169.254.0.0/16 and fd00::/8 only, inside these
namespaces; nothing is routed out of them.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import attrs
import trio


@attrs.define
class Host:
    """The namespaces one test made (``tnsm-<random>``) and ``ip`` commands to look into them."""

    names: list[str] = attrs.Factory(list)

    async def netns(self) -> str:
        """A new named namespace; returns its ``file:///run/netns/<name>`` URL."""
        name = f"tnsm-{secrets.token_hex(4)}"
        self.names.append(name)
        await trio.run_process(["ip", "netns", "add", name])
        return f"file:///run/netns/{name}"

    async def run(self, url: str, *args: str) -> str:
        """``ip -n <name> <args>``: its stdout."""
        name = url.removeprefix("file:///run/netns/")
        done = await trio.run_process(["ip", "-n", name, *args], capture_stdout=True)
        return done.stdout.decode()

    async def json(self, url: str, *args: str) -> list[dict[str, Any]]:
        """``ip -j -n <name> <args>``, parsed."""
        out = await self.run(url, "-j", *args)
        return list(json.loads(out)) if out.strip() else []

    async def links(self, url: str) -> dict[str, dict[str, Any]]:
        """Every link of the namespace by name (the full listing, ``lo`` included)."""
        return {link["ifname"]: link for link in await self.json(url, "link", "show")}

    async def remove(self) -> None:
        for name in self.names:
            await trio.run_process(["ip", "netns", "del", name], check=False)
