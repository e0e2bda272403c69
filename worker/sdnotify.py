"""systemd's notify protocol (sd_notify), with the standard library only.

One datagram per message to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or an
abstract address written with a leading '@'). Outside systemd (no `NOTIFY_SOCKET`) every
call does nothing.

`SystemdNotifier` turns what the daemon does into messages, as a `LiveState` listener:

- `READY=1` once the worker has reached Redis (its state left "starting") and the model
  check passes; until then `STATUS=` says what it waits for;
- `STATUS=` lines for `systemctl status`: idle / busy with the job / draining, jobs done;
- `WATCHDOG=1` from `LiveState.beat()`, i.e. from the daemon's main loop and never from a
  thread of its own, so a hung loop stops the pings and systemd's watchdog fires;
- `STOPPING=1` when a shutdown starts.

Only the process that read the environment sends: a forked work-horse is silent (pid
check, and the socket is closed in the child after fork).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

from worker.health import Check, failing_checks
from worker.safe import escape
from worker.state import State

log = logging.getLogger(__name__)

# Environment variables of the protocol. We unset them after reading (as sd_notify's
# `unset_environment` does) so that programs a job starts do not talk to systemd.
ENV_NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str | None) -> bytes | None:
    """The address to send to: a filesystem path, or '@name' for the abstract namespace."""
    if not value or value[0] not in "/@":
        return None  # unset, or a form we do not speak (e.g. vsock: addresses)
    raw = os.fsencode(value)
    return b"\0" + raw[1:] if raw[:1] == b"@" else raw


def watchdog_seconds(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within, or None when not for this process.

    Mirrors sd_watchdog_enabled(): WATCHDOG_USEC must be a positive integer, and when
    WATCHDOG_PID is set it must be our pid.
    """
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID", "").strip()
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Notifier:
    """Sends sd_notify datagrams; a no-op without `NOTIFY_SOCKET` or in a forked child."""

    def __init__(self, env: Mapping[str, str] | None = None, send_timeout: float = 0.5) -> None:
        env = os.environ if env is None else env
        self.pid = os.getpid()
        self.address = socket_address(env.get("NOTIFY_SOCKET"))
        self.watchdog = watchdog_seconds(env, self.pid)
        self._sock: socket.socket | None = None
        self._send_timeout = send_timeout
        os.register_at_fork(after_in_child=self._forget)

    @property
    def enabled(self) -> bool:
        return self.address is not None and os.getpid() == self.pid

    def _forget(self) -> None:
        """In a forked child: close our copy of the socket and never send."""
        sock, self._sock = self._sock, None
        self.address = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def notify(self, *lines: str) -> bool:
        """Send one message made of `lines` (e.g. "READY=1", "STATUS=idle"); True if sent.

        Each line is one assignment: a newline (or NUL, which makes systemd drop the whole
        message) inside a line is escaped, so text in a STATUS can never add an assignment."""
        if not self.enabled or not lines:
            return False
        data = "\n".join(line if line.isprintable() else escape(line) for line in lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never let a full or stuck receiver hold the main loop for long.
                self._sock.settimeout(self._send_timeout)
            self._sock.sendto(data, self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", lines[0], exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class SystemdNotifier:
    """Listens to a `LiveState` and keeps systemd informed. Call it from the main loop only."""

    STATUS_MIN_INTERVAL = 1.0  # seconds between STATUS updates (READY and STOPPING go at once)
    CHECK_INTERVAL = 1.0  # seconds between readiness checks while not ready

    def __init__(self, notifier: Notifier, checks: Mapping[str, Check] | None = None, tick: float = 1.0) -> None:
        """`tick`: the longest the main loop goes between beats (POLL_INTERVAL)."""
        self.notifier = notifier
        self.checks = dict(checks or {})
        self.ready = False
        self.stopping = False
        self._last_check = float("-inf")
        self._last_watchdog = float("-inf")
        self._last_status_at = float("-inf")
        self._sent_status: str | None = None
        self._waiting_for = "starting"
        # Ping at least every half of the watchdog timeout given beats `tick` apart, but
        # no more often than a quarter of it, however fast the loop spins.
        wd = notifier.watchdog
        self.watchdog_min_gap = max(wd / 2 - tick, wd / 4) if wd else None

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    def __call__(self, state, event: str) -> None:
        """`LiveState` listener: `event` is "beat", "state", "job_started" or "job_ended"."""
        if not self.notifier.enabled:
            return
        try:
            self._on_event(state, event)
        except Exception:  # systemd bookkeeping must never break the daemon's loop
            log.exception("sd_notify listener failed")

    def _on_event(self, state, event: str) -> None:
        now = time.monotonic()
        gap = self.watchdog_min_gap
        due = event == "beat" and gap is not None and now - self._last_watchdog >= gap
        if due and self.notifier.notify("WATCHDOG=1"):
            self._last_watchdog = now
        snap = state.snapshot()
        snap["redis_ok"] = state.redis_ok
        kind = snap["state"]
        if kind == State.DRAINING and not self.stopping:
            self.stopping = True
            self._status(now, snap, extra=("STOPPING=1",), force=True)
            return
        if not self.ready and kind in (State.IDLE, State.BUSY) and now - self._last_check >= self.CHECK_INTERVAL:
            self._last_check = now
            failing = "; ".join(failing_checks(self.checks))
            if failing:
                self._waiting_for = failing
            else:
                self.ready = True
                self._status(now, snap, extra=("READY=1",), force=True)
                return
        # At most one STATUS a second (a busy worker runs dozens of jobs a second); a person
        # reading `systemctl status` sees the state as of the last second.
        self._status(now, snap, force=self._sent_status is None)

    def status_text(self, snap: dict) -> str:
        kind = snap["state"]
        counts = f"{snap['jobs_done']} jobs done, {snap['jobs_failed']} failed"
        job = snap.get("current_job")
        if kind == State.STARTING:
            return "starting: connecting to Redis"
        if not self.ready and kind in (State.IDLE, State.BUSY):
            return f"starting: waiting for {self._waiting_for}"
        if kind == State.BUSY and job:
            return f"busy: job {job['id']} ({job['function']}) on {job['queue']}; {counts}"
        if kind == State.DRAINING:
            what = f"finishing job {job['id']}" if job else "stopping"
            return f"draining: {what}; {counts}"
        if snap.get("redis_ok") is False:
            return f"{kind}, Redis unavailable (retrying); {counts}"
        return f"{kind}; {counts}"

    def _status(self, now: float, snap: dict, extra: tuple[str, ...] = (), force: bool = False) -> None:
        text = self.status_text(snap)
        if not extra and text == self._sent_status:
            return
        if not force and not extra and now - self._last_status_at < self.STATUS_MIN_INTERVAL:
            return
        if self.notifier.notify(*extra, f"STATUS={text}"):
            self._sent_status = text
            self._last_status_at = now
        elif extra:  # READY/STOPPING not delivered: try again on the next event
            if "READY=1" in extra:
                self.ready = False
            if "STOPPING=1" in extra:
                self.stopping = False

    def stopped(self, jobs: int) -> None:
        """The daemon's loop has ended: a last status line (STOPPING=1 again, harmless)."""
        self.notifier.notify("STOPPING=1", f"STATUS=stopped after {jobs} jobs")


def from_environment(checks: Mapping[str, Check] | None = None, tick: float = 1.0) -> SystemdNotifier:
    """Read the protocol's variables, then unset them (children must not notify)."""
    notifier = Notifier(os.environ)
    for name in ENV_NAMES:
        os.environ.pop(name, None)
    return SystemdNotifier(notifier, checks, tick)
