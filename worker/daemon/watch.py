"""The parent's watch over a work-horse: wait for it to end, enforce the deadlines, beat.

`decide` holds the deadline rules as a pure function of time (tested in milliseconds); `watch`
is the loop around it. It waits on a pidfd and the signal pipe, so it sees the horse exit at
once and a stop request within a tick. Whatever the periodic work raises, the loop goes on:
it ends only when the horse has ended, and then it has been reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from worker.daemon.signals import Signals


class Verdict(Enum):
    WAIT = "wait"
    PUT_BACK = "put back"  # stop the horse, the job goes back to the front of its queue
    KILL = "kill"  # the job outlived its timeout: stop the horse, the job fails


def decide(
    now: float,
    started: float,
    timeout: float,
    grace: float,
    warm_stop_at: float | None,
    shutdown_timeout: float,
    cold: bool,
) -> tuple[Verdict, str]:
    """What to do with a running horse at monotonic time `now`, and why."""
    if cold:
        return Verdict.PUT_BACK, "cold shutdown"
    if warm_stop_at is not None and now - warm_stop_at >= shutdown_timeout:
        return Verdict.PUT_BACK, f"still running after SHUTDOWN_TIMEOUT={shutdown_timeout}s"
    if now - started > timeout + grace:
        return Verdict.KILL, f"outlived its timeout ({timeout:.0f}s) by the grace of {grace}s"
    return Verdict.WAIT, ""


@dataclass
class Ending:
    status: int | None  # the horse's wait status (None: not known)
    verdict: Verdict  # WAIT: it ended by itself
    why: str


def kill_and_reap(pid: int) -> int | None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the horse leads its own process group
    with contextlib.suppress(ChildProcessError):
        return os.wait4(pid, 0)[1]
    return None


def watch(
    pid: int,
    signals: Signals,
    timeout: float,
    grace: float,
    shutdown_timeout: float,
    tick: Callable[[], None],
    periodic: Callable[[], None],
    interval: float,
    poll: float,
) -> Ending:
    """Wait for horse `pid` to end, or end it. `tick` runs every wake-up (liveness),
    `periodic` every `interval` seconds (heartbeats, sweeps); the caller guards both."""
    started = last_periodic = time.monotonic()
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            tick()
            signals.wait(poll, pidfd)
            wpid, wstatus, _ = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                return Ending(wstatus, Verdict.WAIT, "")
            now = time.monotonic()
            verdict, why = decide(now, started, timeout, grace, signals.warm_stop_at, shutdown_timeout, signals.cold)
            if verdict is not Verdict.WAIT:
                return Ending(kill_and_reap(pid), verdict, why)
            if now - last_periodic >= interval:
                last_periodic = now
                periodic()
    except BaseException:
        kill_and_reap(pid)  # never leave a horse unsupervised: its job is recovered as abandoned
        raise
    finally:
        os.close(pidfd)
