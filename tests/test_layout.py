"""The repository's shape: one import name, the symlinked packages, the layering, the lazy facade,
the wheel's contents and the console script."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOT_PACKAGES = ("actors", "transport", "kernel", "supervision")
BARE_BANNED = {*ROOT_PACKAGES, "scenarios"}
SKIP_DIRS = {".venv", ".git", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}

# Layer of each internal module and the internal layers it may import (see the README).
ALLOWED: dict[str, set[str]] = {
    "api": {"api"},
    "errors": set(),
    "clock": set(),
    "identity": {"api", "errors", "clock"},
    "supervision": set(),
    "transport": {"api", "errors", "identity", "clock"},
    "kernel": {"api", "errors"},
    "actors": {"supervision", "transport", "kernel", "identity", "api", "errors", "clock"},
}
TOP = "top"  # cli, scenario builder, scenarios, testing helpers: may import everything
TRIO_DEPENDENCIES = {"trio", "outcome", "sniffio", "sortedcontainers", "idna", "attr", "attrs"}


def python_files() -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [
            d
            for d in dirnames
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not Path(dirpath, d).is_symlink()
        ]
        for name in filenames:
            if name.endswith(".py"):
                yield Path(dirpath, name)


def layer_of(path: Path) -> str | None:
    """The layer of a source file, by its real location; None for tests, bench and tooling."""
    parts = path.relative_to(ROOT).parts
    if parts[0] in ROOT_PACKAGES:
        return parts[0]
    if parts[0] == "scenarios":
        return TOP
    if parts[0] != "trionsm":
        return None
    if len(parts) == 2:
        name = parts[1].removesuffix(".py")
        if name == "__init__":
            return "facade"
        return name if name in ALLOWED else TOP
    return parts[1] if parts[1] in ALLOWED else TOP


def module_of(path: Path) -> list[str]:
    """Dotted package of a file as imported (``trionsm.supervision._spec`` -> its package parts)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ROOT_PACKAGES:
        parts = ["trionsm", *parts]
    return parts[:-1]  # the file's package; for __init__.py that is the package itself


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """Every imported module (absolute dotted name), relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield node.lineno, name
            if node.module is None or node.level:
                for alias in node.names:  # `from . import x` may import a submodule
                    yield node.lineno, f"{name}.{alias.name}"


def internal_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "trionsm":
        return None
    if len(parts) == 1 or parts[1] == "__version__":
        return "facade"
    return parts[1] if parts[1] in ALLOWED else TOP


def test_root_packages_are_relative_symlinks() -> None:
    for name in ROOT_PACKAGES:
        link = ROOT / "trionsm" / name
        assert link.is_symlink(), f"trionsm/{name} must be a symlink"
        assert os.readlink(link) == f"../{name}", f"trionsm/{name} must point to ../{name}"
        assert (ROOT / name / "__init__.py").is_file()
    for role in ("nsmgr", "registry", "forwarder"):
        module, package = ROOT / "actors" / f"{role}.py", ROOT / "actors" / role / "__init__.py"
        assert module.is_file() or package.is_file(), f"actors/{role} is missing"


def test_no_bare_imports_of_the_root_packages() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in python_files()
        for line, module in imports_of(path)
        if module.split(".")[0] in BARE_BANNED
    ]
    assert offenders == [], "import these as trionsm.<package>:\n" + "\n".join(offenders)


def test_ruff_bans_bare_imports_too() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    banned = config["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"]
    assert set(ROOT_PACKAGES) <= set(banned)
    assert "TID" in config["tool"]["ruff"]["lint"]["select"]


def test_layering() -> None:
    offenders = []
    for path in python_files():
        layer = layer_of(path)
        if layer is None or layer == TOP:
            continue
        allowed = ALLOWED.get(layer, set()) | {layer, "facade"}
        for line, module in imports_of(path):
            target = internal_layer(module)
            if target is not None and target not in allowed:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {layer} -> {module}")
    assert offenders == [], "layering violations:\n" + "\n".join(offenders)


def _third_party_rule(path: Path, layer: str, top: str) -> str | None:
    """Why importing top-level module ``top`` from ``path`` breaks a rule, or None."""
    rel = path.relative_to(ROOT).as_posix()
    if layer == "supervision" and top not in sys.stdlib_module_names | TRIO_DEPENDENCIES:
        return "supervision/ depends on trio and attrs only"
    if layer == "supervision" and top == "asyncio":
        return "supervision/ knows nothing of asyncio"
    if top == "pyroute2" and layer != "kernel":
        return "pyroute2 only inside kernel/"
    if top == "trio_asyncio" and rel != "transport/_aio.py":
        return "trio-asyncio only in transport/_aio.py"
    grpc_module = layer == "transport" and ("grpc" in rel or rel.startswith("transport/_etcd"))
    if top == "grpclib" and layer != "api" and not grpc_module:
        return "grpclib only in transport's gRPC modules and the generated api"
    if top == "zmq" and not (layer == "transport" and "zmq" in rel):
        return "pyzmq only in transport's ZeroMQ modules"
    if top == "cryptography" and layer != "identity":
        return "cryptography only in trionsm.identity"
    return None


def test_third_party_imports_stay_in_their_modules() -> None:
    offenders = []
    for path in python_files():
        layer = layer_of(path)
        if layer is None:
            continue
        for line, module in imports_of(path):
            top = module.split(".")[0]
            if top == "trionsm" or not top:
                continue
            reason = _third_party_rule(path, layer, top)
            if reason:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}: {reason}")
    assert offenders == [], "\n".join(offenders)


def _modules_after(statement: str) -> set[str]:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    loaded = set(out.split())
    return {m for m in loaded if m not in sys.stdlib_module_names and not m.startswith("_")}


def test_importing_trionsm_loads_nothing_heavy() -> None:
    assert _modules_after("import trionsm") <= {"trionsm"}


def test_importing_supervision_loads_trio_and_attrs_only() -> None:
    loaded = _modules_after("import trionsm.supervision")
    assert loaded <= TRIO_DEPENDENCIES | {"trionsm"}, loaded
    assert {"trio", "attrs"} <= loaded


def test_importing_transport_loads_no_carrier_until_used() -> None:
    loaded = _modules_after("import trionsm.transport")
    assert not loaded & {"trio_asyncio", "zmq"}, loaded


def test_wheel_contains_only_the_trionsm_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("trionsm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    strays = [n for n in names if not n.startswith(("trionsm/", "trionsm-"))]
    assert strays == []
    for expected in (
        "trionsm/supervision/_supervisor.py",
        "trionsm/actors/nsmgr.py",
        "trionsm/transport/__init__.py",
        "trionsm/kernel/__init__.py",
        "trionsm/py.typed",
    ):
        assert expected in names
    assert any(n.endswith("entry_points.txt") for n in names)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trionsm.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_version_and_help() -> None:
    version = _cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("trionsm ")
    helped = _cli("--help")
    assert helped.returncode == 0
    assert "Network Service Mesh" in helped.stdout


@pytest.mark.parametrize("args", [(), ("no-such-command",)])
def test_cli_without_a_valid_command_fails(args: tuple[str, ...]) -> None:
    assert _cli(*args).returncode == 2


def test_demo_is_a_command_with_json_output() -> None:
    """``trionsm demo`` exists (its run is tests/test_demo.py): help says what it does."""
    result = _cli("demo", "--help")
    assert result.returncode == 0
    assert "network namespaces" in result.stdout
    assert "--json" in result.stdout
