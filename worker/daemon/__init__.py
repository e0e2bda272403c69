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

from worker.daemon.horse import TAKEN_OVER_EXIT
from worker.daemon.parent import func_name
from worker.daemon.worker import DaemonWorker

__all__ = ["TAKEN_OVER_EXIT", "DaemonWorker", "func_name"]
