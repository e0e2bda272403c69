"""pytest plugin for running RQ's own test suite (make rq-suite; see tools/rqsuite/run.py).

Loaded with `-p rqsuite_plugin` before RQ's test modules are imported. With RQSUITE_WORKER=ours
it puts `worker.daemon.DaemonWorker` where RQ's tests find `Worker` (`from rq import Worker`,
`from rq.worker import Worker`, `rq.worker.worker_classes.Worker`, `rq.worker_pool.Worker` and
WorkerPool's default `worker_class`, and the 'rq.Worker' default RQ's CLI resolves by name), so
every `Worker(...)` a test builds, and every worker a pool or `rq worker` starts in-process, is
ours and its `work()` runs our main loop (`rqworker` run as a subprocess, in three tests, is
RQ's). RQ's other classes (SimpleWorker, SpawnWorker, HerokuWorker...) stay RQ's: they are not
ours to replace.

Every function the test suite defines (module level, static and class methods) is registered
in EXTRA_JOBS, as a user registers their jobs: the allow-list stays on, so a job that names
anything else (a builtin, an instance method) is refused as it would be in production.

Whatever the mode, each test's outcome is appended to RQSUITE_RESULTS as it ends (one JSON
object a line), and a test that runs longer than RQSUITE_TEST_TIMEOUT seconds is recorded as
`timeout`, its threads' stacks dumped to stderr, and the process ended (exit 99): the runner
starts pytest again without the tests already recorded. At the end, child processes a failed
test left running (a WorkerPool's workers, say) are killed, or pytest would wait for them forever.
"""

from __future__ import annotations

import ast
import contextlib
import faulthandler
import json
import os
import sys
import threading
import time
from pathlib import Path

MODE = os.environ.get("RQSUITE_WORKER", "plain")
RESULTS = os.environ.get("RQSUITE_RESULTS")
TEST_TIMEOUT = float(os.environ.get("RQSUITE_TEST_TIMEOUT", "180"))
TESTS_DIR = Path(os.environ.get("RQSUITE_TESTS_DIR", "tests")).resolve()


def job_names(tests_dir: Path, package: str = "tests") -> list[str]:
    """Dotted names of every function the test package defines, as RQ would name them."""
    names = []
    for path in sorted(tests_dir.glob("*.py")):
        module = package if path.stem == "__init__" else f"{package}.{path.stem}"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.append(f"{module}.{node.name}")
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        decorators = {getattr(d, "id", None) for d in item.decorator_list}
                        if decorators & {"staticmethod", "classmethod"}:
                            names.append(f"{module}.{node.name}.{item.name}")
    return names


def substitute_worker() -> type:
    os.environ["EXTRA_JOBS"] = ",".join(job_names(TESTS_DIR))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # RQ's tests enqueue with pickle and build workers without a serializer: pickle is then the
    # explicit choice (WORKER_SERIALIZER); left unset, ours would read JSON and fail them all.
    os.environ["WORKER_SERIALIZER"] = "pickle"
    import rq
    import rq.worker
    import rq.worker.worker_classes
    import rq.worker_pool

    from worker.daemon import DaemonWorker  # imports rq.Worker first: ours subclasses the real one

    original = rq.Worker
    for module in (rq, rq.worker, rq.worker.worker_classes, rq.worker_pool):
        module.Worker = DaemonWorker
    for func in (rq.worker_pool.WorkerPool.__init__, rq.worker_pool.run_worker):  # `worker_class=Worker`
        func.__defaults__ = tuple(DaemonWorker if d is original else d for d in func.__defaults__)
    return DaemonWorker


if MODE == "ours":
    substitute_worker()
elif MODE != "plain":
    raise SystemExit(f"RQSUITE_WORKER must be plain or ours, not {MODE!r}")


# -- results, one line a test, and a guard against a test that never ends ---------------------
_outcomes: dict[str, str] = {}
_started: dict[str, float] = {}
_current: list[str | None] = [None]


def _write(nodeid: str, outcome: str, seconds: float) -> None:
    if RESULTS:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": nodeid, "outcome": outcome, "seconds": round(seconds, 3)}) + "\n")


def _watchdog() -> None:
    while True:
        time.sleep(1)
        nodeid = _current[0]
        if nodeid is not None and time.monotonic() - _started.get(nodeid, time.monotonic()) > TEST_TIMEOUT:
            print(f"\nrqsuite: {nodeid} still running after {TEST_TIMEOUT:.0f}s; stacks:", file=sys.stderr)
            faulthandler.dump_traceback(all_threads=True)
            _write(nodeid, "timeout", TEST_TIMEOUT)
            os._exit(99)


def pytest_configure(config) -> None:
    threading.Thread(target=_watchdog, name="rqsuite-watchdog", daemon=True).start()


def pytest_collection_modifyitems(config, items) -> None:
    """Leave out the tests already recorded (a restart after a timeout)."""
    if not RESULTS or not os.path.exists(RESULTS):
        return
    with open(RESULTS, encoding="utf-8") as f:
        done = {json.loads(line)["test"] for line in f if line.strip()}
    keep = [item for item in items if item.nodeid not in done]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = keep


def pytest_runtest_logstart(nodeid, location) -> None:
    _started[nodeid] = time.monotonic()
    _current[0] = nodeid


def pytest_runtest_logreport(report) -> None:
    previous = _outcomes.get(report.nodeid, "passed")
    if report.failed:
        outcome = "failed"
    elif report.skipped and previous != "failed":
        outcome = "skipped"
    else:
        outcome = previous
    _outcomes[report.nodeid] = outcome


def pytest_runtest_logfinish(nodeid, location) -> None:
    _current[0] = None
    _write(nodeid, _outcomes.pop(nodeid, "passed"), time.monotonic() - _started.pop(nodeid, time.monotonic()))


def pytest_sessionfinish(session, exitstatus) -> None:
    """Kill what failed tests left running: multiprocessing joins its children at exit."""
    try:
        import psutil
    except ImportError:
        return
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
