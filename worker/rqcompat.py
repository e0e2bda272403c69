"""The parts of RQ this package uses beyond RQ's documented API, in one place.

`DaemonWorker` overrides or calls RQ internals (its horse handling, failure path, execution
records, scheduler locks) and `GuardedJob` the job's callback and webhook fields. RQ is pinned
to the release these were read from (setup.cfg); `missing()` names what an upgrade removed or
renamed, the test suite fails on it, and the daemon logs it at start.
"""

from __future__ import annotations

import importlib

# Methods and properties of rq.Worker that DaemonWorker overrides or calls.
WORKER_METHODS = (
    "_finalize_failure",
    "_finalize_success",
    "_pubsub_exception_handler",
    "_handle_stopped_job",
    "_install_signal_handlers",
    "bootstrap",
    "cleanup_execution",
    "connection_timeout",
    "fork_work_horse",
    "get_heartbeat_ttl",
    "get_state",
    "handle_exception",
    "handle_job_failure",
    "handle_payload",
    "handle_work_horse_killed",
    "heartbeat",
    "main_work_horse",
    "maintain_heartbeats",
    "monitor_work_horse",
    "prepare_execution",
    "reorder_queues",
    "request_stop",
    "run_maintenance_tasks",
    "set_state",
    "should_run_maintenance_tasks",
    "teardown",
    "unsubscribe",
    "work",
)
# Attributes an rq.Worker sets in __init__ and DaemonWorker reads or writes.
WORKER_ATTRIBUTES = (
    "_dequeue_strategy",
    "_exc_handlers",
    "_horse_pid",
    "_ordered_queues",
    "_stop_requested",
    "_stopped_job_id",
    "executions",
    "pubsub",
    "pubsub_thread",
)
# Attributes of an rq.job.Job that GuardedJob reads or replaces.
JOB_ATTRIBUTES = (
    "_exc_info",
    "_failure_callback_name",
    "_stopped_callback_name",
    "_success_callback_name",
    "failure_callback",
    "fetch_many",
    "instance",
    "refresh",
    "repeat_intervals",
    "restore",
    "retry_intervals",
    "send_webhooks",
    "stopped_callback",
    "success_callback",
    "webhooks",
)
# Functions and classes used by dotted name.
NAMES = (
    "rq.command.parse_payload",
    "rq.defaults.DEFAULT_SERIALIZER_CLASS",
    "rq.executions.Execution.create",
    "rq.job_lifecycle.call_exception_handlers",
    "rq.executions.Execution.from_composite_key",
    "rq.job.parse_job_id",
    "rq.job_lifecycle.record_job_failure",
    "rq.results.Result.create_failure",
    "rq.scheduler.Job",
    "rq.scheduler.RQScheduler.acquire_locks",
    "rq.scheduler.RQScheduler.enqueue_scheduled_jobs",
    "rq.scheduler.RQScheduler.get_locking_key",
    "rq.scheduler.RQScheduler.heartbeat",
    "rq.scheduler.RQScheduler.release_locks",
    "rq.scheduler.RQScheduler.should_reacquire_locks",
    "rq.utils.import_job_class",
    "rq.utils.parse_composite_key",
    "rq.webhook.Webhook.get_payload",
    "rq.worker_registration.REDIS_WORKER_KEYS",
)


def _lookup(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def missing() -> list[str]:
    """What this package needs from RQ and the installed RQ lacks (empty when all is there)."""
    from redis import Redis
    from rq import Worker
    from rq.job import Job

    gone = [f"rq.Worker.{name}" for name in WORKER_METHODS if not hasattr(Worker, name)]
    worker = Worker([], name="rqcompat-probe", connection=Redis(), prepare_for_work=False)  # no I/O
    gone += [f"rq.Worker().{name}" for name in WORKER_ATTRIBUTES if not hasattr(worker, name)]
    job = Job("rqcompat-probe", connection=Redis())
    gone += [f"rq.job.Job.{name}" for name in JOB_ATTRIBUTES if not hasattr(type(job), name) and not hasattr(job, name)]
    gone += [name for name in NAMES if not _lookup(name)]
    return gone
