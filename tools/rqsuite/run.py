"""Run RQ's own test suite twice, with RQ's `Worker` and with ours, and compare (make rq-suite).

1. Fetch RQ's sdist at the pinned version, hash-checked (tools/rqsuite/rq-sdist.txt), and unpack
   its tests into var/rq-suite/ (its `rq/` package is left out: the tests import the RQ installed
   in .venv, which must be the same version). psutil, which RQ's tests need, goes into
   var/rq-suite/deps (tools/rqsuite/test-deps.txt), never into .venv.
2. Run the suite with plain `rq.Worker` and with `worker.daemon.DaemonWorker` substituted
   (tools/rqsuite/rqsuite_plugin.py), both at once, each in its own network namespace
   (`unshare -n`) holding a private redis-server on 127.0.0.1:6379: RQ's tests connect to the
   default port and flush databases, and in a namespace no other Redis is reachable.
3. Run again, in both modes, the tests that passed with RQ's class and not with ours (timing
   noise on a busy machine), then print the comparison. Exit 1 if a test passes with RQ's
   class and fails with ours twice and is not listed in tools/rqsuite/differences.txt with a
   reason documented in docs/rq-suite.md.

Usage: python tools/rqsuite/run.py [--only plain|ours] [--serial] [-k EXPR] [pytest args...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORK = ROOT / "var" / "rq-suite"
DIST = WORK / "dist"
DEPS = WORK / "deps"
DIFFERENCES = HERE / "differences.txt"
DOC = ROOT / "docs" / "rq-suite.md"
MODES = ("plain", "ours")
RUN_TIMEOUT = 40 * 60  # a whole pass; one test is limited by RQSUITE_TEST_TIMEOUT


def pinned() -> tuple[str, str]:
    text = (HERE / "rq-sdist.txt").read_text()
    version = re.search(r"^rq==(\S+)", text, re.M).group(1)
    digest = re.search(r"--hash=sha256:([0-9a-f]{64})", text).group(1)
    return version, digest


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def set_up() -> Path:
    """The unpacked suite (tests/, pyproject.toml for its pytest settings), fetched if needed."""
    import rq

    version, digest = pinned()
    if rq.__version__ != version:
        raise SystemExit(f"rq-suite: .venv has rq {rq.__version__}, the suite is pinned to {version}")
    sdist = DIST / f"rq-{version}.tar.gz"
    if not sdist.is_file() or hashlib.sha256(sdist.read_bytes()).hexdigest() != digest:
        DIST.mkdir(parents=True, exist_ok=True)
        pip("download", "--no-deps", "--no-binary", ":all:", "--require-hashes", "-d", str(DIST),
            "-r", str(HERE / "rq-sdist.txt"))  # fmt: skip
    if not (DEPS / ".installed").is_file():
        shutil.rmtree(DEPS, ignore_errors=True)
        pip("install", "--no-deps", "--require-hashes", "--target", str(DEPS), "-r", str(HERE / "test-deps.txt"))
        (DEPS / ".installed").touch()
    src = WORK / f"rq-{version}"
    if not (src / ".unpacked").is_file():
        shutil.rmtree(src, ignore_errors=True)
        prefix = f"rq-{version}/"
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix + "tests/") or m.name in (prefix + "pyproject.toml", prefix + "tox.ini")
            ]
            tar.extractall(WORK, members=members, filter="data")
        (src / ".unpacked").touch()
    return src


def namespace_prefix() -> list[str]:
    if not shutil.which("unshare"):
        raise SystemExit("rq-suite: needs `unshare` (util-linux) to give RQ's tests a private network namespace")
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]


def start_pass(mode: str, src: Path, results: Path, pytest_args: list[str]) -> subprocess.Popen:
    results.unlink(missing_ok=True)
    log = open(results.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
    inner = [sys.executable, __file__, "--inside", mode, "--results", str(results), "--", *pytest_args]
    cmd = [*namespace_prefix(), *inner]
    proc = subprocess.Popen(cmd, cwd=src, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def inside(mode: str, results: Path, pytest_args: list[str]) -> int:
    """In the namespace: loopback up, a private Redis on 6379, pytest until every test is recorded."""
    sys.path.insert(0, str(ROOT))
    from worker.devredis import RedisServer, answers

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if answers("127.0.0.1", 6379):
        raise SystemExit("rq-suite: something answers on 6379 inside the namespace; refusing to run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RQ_", "WORKER_", "PYTEST_"))}
    env.update(
        RQSUITE_WORKER=mode,
        RQSUITE_RESULTS=str(results),
        RQSUITE_TESTS_DIR=str(Path.cwd() / "tests"),
        PYTHONPATH=os.pathsep.join([str(DEPS), str(HERE)]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONDONTWRITEBYTECODE="1",
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "rqsuite_plugin", "-p", "no:cacheprovider", "-q", "-rN", *pytest_args]
    directory = WORK / f"redis-{mode}"
    shutil.rmtree(directory, ignore_errors=True)
    with RedisServer(port=6379, directory=directory):
        for _ in range(50):  # restarts after a test that timed out (exit 99)
            code = subprocess.run(cmd, env=env).returncode
            if code != 99:
                break
    shutil.rmtree(directory, ignore_errors=True)
    return code


def read(results: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["test"]] = row["outcome"]
    return out


def run_passes(src: Path, tag: str, modes: tuple[str, ...], serial: bool, pytest_args: list[str]):
    found = {}
    procs = {}
    for mode in modes:
        results = WORK / f"results-{tag}-{mode}.jsonl"
        procs[mode] = (start_pass(mode, src, results, pytest_args), results)
        if serial:
            procs[mode][0].wait(RUN_TIMEOUT)
    for mode, (proc, results) in procs.items():
        try:
            proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"rq-suite: the {mode} pass ran over {RUN_TIMEOUT}s and was stopped", file=sys.stderr)
        proc.log.close()
        found[mode] = read(results)
        if not found[mode]:
            print(f"rq-suite: the {mode} pass recorded nothing; see {results.with_suffix('.log')}", file=sys.stderr)
    return found


def documented() -> dict[str, str]:
    """tools/rqsuite/differences.txt: `test-id  reason` lines; each reason a heading in the doc."""
    listed = {}
    headings = set(re.findall(r"^#+ .*`([a-z0-9-]+)`", DOC.read_text(), re.M)) if DOC.is_file() else set()
    for line in DIFFERENCES.read_text().splitlines():
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if not line:
            continue
        test, reason = line.split()
        if reason not in headings:
            raise SystemExit(f"rq-suite: reason {reason!r} ({test}) has no heading in {DOC.relative_to(ROOT)}")
        listed[test] = reason
    return listed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=MODES)
    parser.add_argument("--serial", action="store_true", help="one pass after the other (default: both at once)")
    parser.add_argument("--inside", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = [a for a in pytest_args if a != "--"]
    if args.inside:
        return inside(args.inside, args.results, pytest_args)

    started = time.monotonic()
    src = set_up()
    listed = documented()
    modes = (args.only,) if args.only else MODES
    found = run_passes(src, "first", modes, args.serial, pytest_args or ["tests"])
    if args.only:
        counts = {o: sum(1 for v in found[args.only].values() if v == o) for o in ("passed", "failed", "skipped")}
        print(f"rq-suite ({args.only}): {counts} in {time.monotonic() - started:.0f}s")
        return 0
    plain, ours = found["plain"], found["ours"]
    suspects = sorted(t for t, o in plain.items() if o == "passed" and ours.get(t) != "passed")
    retried = {}
    if suspects:
        print(f"rq-suite: {len(suspects)} tests passed with RQ's Worker and not with ours; running them again")
        retried = run_passes(src, "again", MODES, args.serial, suspects)
    lost, flaky_ours, flaky_plain = [], [], []
    for test in suspects:
        if retried["ours"].get(test) == "passed":
            flaky_ours.append(test)
        elif retried["plain"].get(test) != "passed":
            flaky_plain.append(test)  # fails with RQ's class too, run again: no evidence against ours
        else:
            lost.append(test)
    undocumented = [t for t in lost if t not in listed]
    stale = sorted(t for t in listed if ours.get(t) == "passed")

    def count(res, outcome):
        return sum(1 for v in res.values() if v == outcome)

    print()
    print(f"RQ {pinned()[0]} test suite, {len(plain)} tests")
    for name, res in (("rq.Worker", plain), ("DaemonWorker", ours)):
        print(
            f"  {name:<13} passed {count(res, 'passed'):4}  failed {count(res, 'failed'):4}  "
            f"skipped {count(res, 'skipped'):4}  timeout {count(res, 'timeout'):2}"
        )
    gained = sorted(t for t, o in ours.items() if o == "passed" and plain.get(t) != "passed")
    print(f"  pass with RQ's class, fail with ours: {len(lost)} ({len(lost) - len(undocumented)} documented)")
    by_reason: dict[str, list[str]] = {}
    for test in lost:
        by_reason.setdefault(listed.get(test, "UNDOCUMENTED"), []).append(test)
    for reason, tests in sorted(by_reason.items()):
        print(f"    {reason}: {len(tests)}")
        for test in tests:
            print(f"      {test}")
    if flaky_ours or flaky_plain:
        print(f"  failed once, passed when run again: {len(flaky_ours)} with ours; "
              f"{len(flaky_plain)} failed again with RQ's class too (not counted)")  # fmt: skip
        for test in flaky_ours + flaky_plain:
            print(f"      {test}")
    if gained:
        print(f"  pass with ours, not with RQ's class: {len(gained)}")
        for test in gained:
            print(f"      {test}")
    if stale:
        print(f"  listed in differences.txt but passing with ours now (remove them): {len(stale)}")
        for test in stale:
            print(f"      {test}")
    print(f"  took {time.monotonic() - started:.0f}s; logs and results in {WORK.relative_to(ROOT)}/")
    if undocumented:
        print(f"rq-suite: FAIL: {len(undocumented)} tests pass with rq.Worker, fail with ours and are not documented")
        return 1
    print("rq-suite: OK: every test that passes with rq.Worker passes with ours, or is a documented difference")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
