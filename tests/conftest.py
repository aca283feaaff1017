"""Suite-wide hooks. Shared helpers live in the package (trionsm.scenario, ...), not here."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from hypothesis import HealthCheck, settings

from tests.netns import Host

if TYPE_CHECKING:
    from tests.etcd_server import EtcdServer

settings.register_profile(
    "trionsm",
    deadline=None,  # a noisy 2-core CI machine: speed is a benchmark's job, not a test's
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("trionsm")

_UNDER_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI (root, every package installed) a skipped test is a failure: nothing may hide."""
    outcome = yield
    report = outcome.get_result()
    if _UNDER_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {report.longrepr}"


@pytest.fixture
async def etcd_server(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    """A real etcd on 127.0.0.1 (free ports, data under ``tmp_path``): see tests/etcd_server.py.

    ``.endpoint``, ``.kill()`` (SIGKILL), ``.restart()`` (same ports and data); stopped by its
    PID at the end. Use the real clock (no ``autojump_clock``) in tests that take it.
    """
    from tests.etcd_server import open_etcd_server

    async with open_etcd_server(tmp_path) as server:
        yield server


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    """Network namespaces for this test (``await host.netns()``, ``ip`` to look into them: see
    tests/netns.py); deleted by their exact names when it ends."""
    made = Host()
    try:
        yield made
    finally:
        with trio.CancelScope(shield=True):
            await made.remove()
