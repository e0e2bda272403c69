"""The daemon: an RQ fork worker with a main loop we control, split at the fork.

- `worker.py`: `DaemonWorker`, the RQ-facing class (drop-in constructor, the loop, Redis
  backoff; each RQ override a short delegation). `rq worker -w worker.daemon.DaemonWorker`.
- `signals.py`: handlers that only set flags, and the wake-up pipe.
- `watch.py`: the parent's watch of a horse; its deadline rules are a pure function of time.
- `horse.py`: what runs in the forked horse; it never returns into daemon code.
- `parent.py`: the parent's side of a job after its horse ended (outcome, put back, log).
- `housekeeping.py`: periodic tasks, each behind one error guard.

A job's transitions in Redis are in `worker.lifecycle`, recovery of dead workers' jobs in
`worker.recovery`.
"""

from typing import Any

__all__ = ["TAKEN_OVER_EXIT", "DaemonWorker", "func_name"]

_EXPORTS = {
    "DaemonWorker": "worker.daemon.worker",
    "TAKEN_OVER_EXIT": "worker.daemon.horse",
    "func_name": "worker.daemon.parent",
}


def __getattr__(name: str) -> Any:
    """The package's names, imported when first asked for: its modules import one another
    through the package, which then imports none of them itself (no import cycle)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worker.daemon' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
