"""Run every benchmark in ``bench/`` and collect their results into ``bench/results.json``.

Each ``bench/*.py`` script but this one runs, in name order, as a subprocess of the same
interpreter. A benchmark prints human-readable progress on stderr (echoed here as it comes) and one
JSON object as the last line of stdout. The benchmarks report their headline figures as ratios
against a baseline measured in the same process and run (an actor call against a bare channel round
trip, say), because absolute times swing with the machine, its load and the Python build while the
ratios stay comparable from one machine to another; so those ratios are what to compare across runs.

A benchmark may name its headline figures in ``targets`` (figure -> target) and say in
``meets_targets`` (figure -> bool) which it met; a target is a ceiling unless the figure is listed
in ``targets_at_least`` (a floor, e.g. a throughput ratio). ``bench/dataplane.py`` needs root
(namespaces, veth pairs, vxlan devices) and iperf3; without root it reports ``{"skipped": ...}``.

``bench/results.json`` maps each script's stem to its object. A script that exits non-zero, times
out or prints no JSON object is recorded as ``{"error": "..."}``, and this script then exits 1 once
all the others have run.

Usage: ``python bench/collect.py [--timeout SECONDS]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
DEFAULT_TIMEOUT = 600.0
STDERR_TAIL = 20


def _pump(stream: IO[str], lines: list[str] | collections.deque[str], echo: str | None) -> None:
    """Read ``stream`` to its end into ``lines``, echoing each line to stderr after ``echo``."""
    for line in stream:
        lines.append(line)
        if echo is not None:
            sys.stderr.write(f"{echo}{line}")
            sys.stderr.flush()


def run_script(script: Path, timeout: float) -> tuple[dict[str, Any], bool]:
    """Run one benchmark; return its JSON object and True, or ``{"error": ...}`` and False."""
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=BENCH_DIR.parent,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out: list[str] = []
    err: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, out, None), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, f"[{script.stem}] "), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"error": f"timed out after {timeout:g} s"}, False
    finally:
        for reader in readers:
            reader.join()

    tail = "".join(err).strip()
    if returncode != 0:
        detail = f": {tail.splitlines()[-1]}" if tail else ""
        return {"error": f"exited with status {returncode}{detail}"}, False
    lines = [line for line in out if line.strip()]
    if not lines:
        return {"error": "printed nothing on stdout (expected JSON on the last line)"}, False
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return {"error": f"last stdout line is not JSON ({exc}): {lines[-1].strip()[:200]}"}, False
    if not isinstance(result, dict):
        return {"error": f"last stdout line is not a JSON object: {lines[-1].strip()[:200]}"}, False
    return result, True


def summarise(name: str, result: dict[str, Any], ok: bool, seconds: float) -> str:
    """A line per benchmark (status and wall time), then one per target, met or missed."""
    if not ok:
        return f"{name}: ERROR ({seconds:.1f} s): {result['error']}"
    line = f"{name}: ok ({seconds:.1f} s)"
    targets = result.get("targets")
    meets = result.get("meets_targets")
    floors = result.get("targets_at_least", [])
    if isinstance(targets, dict) and isinstance(meets, dict):
        marks = []
        for key, target in targets.items():
            verdict = "met" if meets.get(key) else "MISSED"
            bound = ">=" if key in floors else "<="
            marks.append(f"{key}={result.get(key)} (target {bound} {target}, {verdict})")
        line += "\n  " + "\n  ".join(marks)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds each benchmark may run (default %(default)s)",
    )
    args = parser.parse_args(argv)

    this = Path(__file__).resolve()
    scripts = sorted(p for p in BENCH_DIR.glob("*.py") if p.resolve() != this)
    results: dict[str, Any] = {}
    summary: list[str] = []
    failed = False
    for script in scripts:
        print(f"running {script.name}...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        result, ok = run_script(script, args.timeout)
        results[script.stem] = result
        failed = failed or not ok
        summary.append(summarise(script.stem, result, ok, time.perf_counter() - began))

    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if not scripts:
        summary.append("no benchmarks found")
    print("\n".join(summary))
    print(f"wrote {RESULTS.relative_to(BENCH_DIR.parent)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
