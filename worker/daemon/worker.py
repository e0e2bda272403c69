"""`DaemonWorker`: the RQ-facing class. An RQ fork worker whose main loop we control.

It keeps RQ's job semantics (a work-horse forked per job, registries, results, retries, `rq
info` visibility) and replaces the loop, the horse's watch and the signal handling. Each
iteration of the loop is an error boundary: an error tied to one job or entry is logged and
the loop goes on; any Redis error (but a lost optimistic lock) means Redis is unusable for a
while: back off, /readyz 503, carry on. The pieces live beside it: `signals`, `watch` (the
parent's watch of a horse), `parent` (the parent's side of a job's end), `horse` (the child's
side), `housekeeping` (periodic tasks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import redis.exceptions
from rq import Worker
from rq.command import parse_payload
from rq.defaults import DEFAULT_SERIALIZER_CLASS
from rq.executions import Execution
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.serializers import DefaultSerializer, JSONSerializer
from rq.suspension import is_suspended
from rq.utils import import_job_class
from rq.worker.base import WorkerStatus

from worker import lifecycle, recovery
from worker.allowlist import GuardedJob
from worker.daemon import horse, housekeeping, parent
from worker.daemon.housekeeping import Backoff, guarded, report
from worker.daemon.signals import Signals
from worker.daemon.watch import kill_and_reap
from worker.dequeue import Dequeuer
from worker.errors import BadInputError, redis_unusable
from worker.safe import safe_text
from worker.settings import Settings, get_settings
from worker.state import LiveState, State, embedding_fields

log = logging.getLogger("worker.daemon")


class DaemonWorker(Worker):
    job_class = GuardedJob

    def __init__(
        self,
        queues,
        name: str | None = None,
        *args,
        settings: Settings | None = None,
        live: LiveState | None = None,
        **kwargs,
    ) -> None:
        """Built as RQ builds workers (`cls(queues, name, connection=...)`, `rq worker -w`,
        `Worker.all()`): settings then come from the environment.

        RQ's defaults do not switch off what this class is for. `rq worker` passes RQ's default
        job class (`rq.job.Job`) and serializer (pickle) explicitly, whatever the user typed:
        those mean "unset" here, so the allowlist stays on (`GuardedJob`) and the serializer is
        WORKER_SERIALIZER (JSON unless set to pickle). A job class that is not a `GuardedJob`
        is refused (ValueError). Any other serializer given is used."""
        self.settings = settings if settings is not None else get_settings()  # before RQ's __init__
        job_class = kwargs.get("job_class")
        if job_class is not None:
            if isinstance(job_class, str):
                job_class = import_job_class(job_class)
            kwargs["job_class"] = None if job_class is Job else job_class
        if kwargs.get("serializer") in (None, DEFAULT_SERIALIZER_CLASS):
            kwargs["serializer"] = JSONSerializer if self.settings.serializer == "json" else DefaultSerializer
        super().__init__(queues, name, *args, **kwargs)
        if not issubclass(self.job_class, GuardedJob):
            raise ValueError(
                f"job class {self.job_class.__module__}.{self.job_class.__qualname__} is not a "
                "worker.allowlist.GuardedJob: it would run any function a payload names"
            )
        self.live = live if live is not None else LiveState(self.name, self.settings.liveness_timeout)
        self.signals = Signals()
        self.over_memory = False  # set by the memory task: the run ends with EXIT_MEMORY
        self._dequeuer: Dequeuer | None = None
        self._scheduler: RQScheduler | None = None
        self._backoff = Backoff()
        self._housekeeping = housekeeping.tasks(self)

    @property
    def connection_timeout(self) -> int:
        """RQ raises the socket timeout to this; ours blocks POLL_INTERVAL at most, so a frozen
        Redis costs the main loop seconds, not RQ's default of seven minutes."""
        return self.settings.poll_interval + 4

    # -- RQ's hooks, delegated --------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        self.signals.install(on_stop=self._flag_stop)

    def _flag_stop(self) -> None:
        self._stop_requested = True

    def request_stop(self, signum=None, frame=None) -> None:
        self.signals.request_stop()

    def unsubscribe(self) -> None:
        """RQ's, without waiting a second for its pubsub thread (a daemon thread, blocked in a
        read) to notice: every stop would take a second longer."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop()

    def handle_payload(self, message) -> None:
        """RQ's commands, from its pubsub thread. Whatever a message holds, it is at worst
        ignored with a log line: the thread (and with it every later command) must live on.
        RQ carries out `shutdown` by sending itself SIGINT, its warm stop; SIGINT is our cold
        one, so here it is a warm stop, as in RQ."""
        try:
            payload = parse_payload(message)
            if not isinstance(payload, dict):
                raise ValueError(f"a command is a JSON object, not {type(payload).__name__}")
            if payload.get("command") == "shutdown":
                log.info("shutdown command received")
                self.request_stop()
                self.signals.wake()
                return
            super().handle_payload(message)
        except Exception as exc:
            log.warning("command message ignored: %s", safe_text(f"{type(exc).__name__}: {exc}", 300))

    def _pubsub_exception_handler(self, exc, pubsub, pubsub_thread) -> None:
        """RQ's ends its thread on anything but a connection error: ours never does."""
        log.warning("command channel: %s; listening again in 2s", safe_text(f"{type(exc).__name__}: {exc}"))
        time.sleep(2.0)

    def work(self, burst: bool = False, max_jobs: int | None = None, dequeue_strategy=None, **_rq_options) -> bool:
        """RQ's entry point (`rq worker -w worker.daemon.DaemonWorker`), running our loop; RQ's
        options for its own loop (logging, scheduler, idle time) do not apply."""
        if dequeue_strategy is not None:
            self.settings = self.settings.override(
                dequeue_strategy=str(getattr(dequeue_strategy, "value", dequeue_strategy))
            )
        return self.run(burst=burst, max_jobs=max_jobs) > 0

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's, as the lifecycle's `start`: the job leaves our in-flight list in the same
        transaction that puts it in the started registry, so it is always in one of the two."""
        with self.connection.pipeline() as pipeline:
            execution = lifecycle.start(pipeline, job, self.inflight_key, self.get_heartbeat_ttl(job), self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            pipeline.execute()
        return execution

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        pid = os.fork()
        if pid == 0:
            horse.run(self, job, queue)  # never returns
        self._horse_pid = pid

    def _finalize_success(self, job, queue, execution, return_value) -> None:  # in the horse
        horse.may_end_job(self, job, execution)
        super()._finalize_success(job, queue, execution, return_value)

    def handle_exception(self, job: Job, *exc_info) -> None:  # in the horse
        """Bad input is an expected end: one line, no traceback (it is in the job's result)."""
        if not isinstance(exc_info[1], BadInputError):
            return super().handle_exception(job, *exc_info)
        log.warning("job %s: bad input, not retried: %s: %s", job.id, type(exc_info[1]).__name__, exc_info[1])
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def _finalize_failure(self, job, queue, execution, exc_info) -> None:  # in the horse
        horse.may_end_job(self, job, execution)
        horse.retry_policy(job, exc_info[1], self.settings.retry_intervals)
        super()._finalize_failure(job, queue, execution, exc_info)

    @property
    def inflight_key(self) -> str:
        return lifecycle.inflight_key(self.name)

    # -- the main loop -----------------------------------------------------------------
    def _tick(self) -> None:
        """Called at least every POLL_INTERVAL: proves the loop is alive."""
        self.live.beat()
        while self.signals.ignored:
            sig = self.signals.ignored.pop()
            log.warning("signal %s ignored (SIGTERM stops the worker)", signal.Signals(sig).name)
        if self._stop_requested and self.live.state != State.DRAINING:
            self.live.set_state(State.DRAINING)
            log.info("shutdown requested: %s", "cold" if self.signals.cold else "warm, finishing the current job")

    def _sleep(self, seconds: float) -> None:
        """Sleep, ticking, but wake early on a signal."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            self._tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.signals.wait(min(left, 1.0))

    def run(self, burst: bool = False, max_jobs: int | None = None) -> int:
        """Run until stopped; returns the number of jobs executed."""
        self._install_signal_handlers()
        self._dequeue_strategy = self.settings.dequeue_strategy
        self._tick()
        if not self._bootstrap_with_retry():
            self.signals.restore()
            return 0
        self.live.set_state(State.IDLE)
        with contextlib.suppress(redis.exceptions.RedisError):
            self.set_state(WorkerStatus.IDLE)  # as RQ shows a worker waiting for work
        completed = 0
        try:
            while not self._stop_requested:
                self._tick()
                try:
                    done = self._iteration(burst)
                except Exception as exc:
                    self._iteration_failed(exc)
                    continue
                if done is None:
                    break
                completed += done
                if max_jobs is not None and completed >= max_jobs:
                    log.info("executed %d jobs (--max-jobs), exiting", completed)
                    break
        finally:
            self.live.set_state(State.DRAINING)
            self._teardown_quietly()
            self.signals.restore()
        return completed

    def _iteration(self, burst: bool) -> int | None:
        """One turn of the loop: housekeeping, then one job if there is one. Returns the jobs
        run (0 or 1), or None when burst mode is done."""
        self._housekeeping.run_due()
        if is_suspended(self.connection, self):
            if burst:
                log.info("queues suspended (rq suspend); burst mode exits")
                return None
            if self.get_state() != WorkerStatus.SUSPENDED:
                self.set_state(WorkerStatus.SUSPENDED)
            self._sleep(self.settings.poll_interval)
            return 0
        if self.get_state() == WorkerStatus.SUSPENDED:
            self.set_state(WorkerStatus.IDLE)
        result = self._dequeue(burst)
        self._redis_back()
        if result is None:
            if burst:
                log.info("queues empty, burst mode exits")
                return None
            return 0
        job, queue = result
        self.reorder_queues(reference_queue=queue)  # DEQUEUE_STRATEGY round_robin / random
        self.execute_job(job, queue)
        return 1

    def _iteration_failed(self, exc: Exception) -> None:
        """The loop's boundary. A horse is never left running unsupervised; a job in hand stays
        in our in-flight list or the started registry, where the next sweep finds it."""
        if self._horse_pid:
            kill_and_reap(self._horse_pid)
            self._horse_pid = 0
        if redis_unusable(exc):
            self._redis_lost(exc)
        else:
            report("main loop", exc)
            self._sleep(self._backoff.next())

    def _bootstrap_with_retry(self) -> bool:
        while not self._stop_requested:
            self._tick()
            try:
                self.bootstrap(self.settings.log_level)
                fields = {recovery.OURS_FIELD: "1", **embedding_fields(self.live.embedding)}
                self.connection.hset(self.key, mapping=fields)
                self._redis_back()
                return True
            except ValueError as exc:  # RQ: "There exists an active worker named ... already"
                guarded("registration", lambda e=exc: self._name_taken(e))
            except Exception as exc:
                if not redis_unusable(exc):
                    report("registration", exc)
                self._redis_lost(exc)
        return False

    def _name_taken(self, exc: ValueError) -> None:
        if recovery.worker_alive(self.connection, self.name, self.settings.dead_worker_after):
            log.error("%s; waiting for it to go away", exc)
            self._sleep(self.settings.heartbeat_interval)
        else:
            log.warning("worker %s left a stale registration (it died); taking over", self.name)
            self.connection.hset(self.key, "death", "stale")

    def _redis_lost(self, exc: BaseException) -> None:
        self.live.redis_ok = False
        delay = self._backoff.next()
        log.warning("Redis unavailable (%s); retrying in %.1fs: %s", type(exc).__name__, delay, safe_text(exc, 120))
        self._sleep(delay)

    def _redis_back(self) -> None:
        if self.live.redis_ok is False:
            log.info("Redis is back")
        self.live.redis_ok = True
        self._backoff.reset()

    def _teardown_quietly(self) -> None:
        if self._dequeuer is not None:
            self._dequeuer.stop()
            self._dequeuer = None  # it holds this run's wake-up fd
        try:
            lifecycle.restore_inflight(self.connection, self.inflight_key)  # normally empty
            if self._scheduler is not None and self._scheduler.acquired_locks:
                self._scheduler.release_locks()
            self.teardown()
        except Exception as exc:
            log.warning("could not register worker death in Redis (%s)", safe_text(type(exc).__name__))

    def _dequeue(self, burst: bool) -> tuple[Job, Queue] | None:
        if self._dequeuer is None:
            self._dequeuer = Dequeuer(
                self.connection,
                self.inflight_key,
                self.settings.poll_interval,
                self.job_class,
                self.serializer,
                wake_fd=self.signals.wake_r,
            )
        try:
            return self._dequeuer.next(self._ordered_queues, burst)
        finally:
            self.signals.drain()

    # -- one job: the parent's side ---------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        parent.execute(self, job, queue)

    def monitor_work_horse(self, job: Job, queue: Queue, execution) -> None:
        parent.watch_horse(self, job, queue, execution)

    def _handle_dead_horse(self, job: Job, queue: Queue, execution, status: int | None) -> None:
        parent.fail_dead_horse(self, job, queue, execution, status)
