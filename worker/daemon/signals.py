"""Signals, as flags only: the handlers record what was asked, the main loop acts on it.

SIGTERM asks for a warm stop (finish the job); a second SIGTERM or a SIGINT for a cold one.
SIGHUP, SIGUSR1 and SIGUSR2 would otherwise end the daemon by default and leave its horse
running unsupervised: they are recorded and logged, nothing more. A self-pipe, written by
Python's wake-up fd, ends any `select` the loop waits in, so a signal is seen at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class Signals:
    def __init__(self) -> None:
        self.warm_stop_at: float | None = None  # time.monotonic() of the first stop signal
        self.cold = False
        self.ignored: list[int] = []  # received, not yet logged by the main loop
        self.wake_r = self.wake_w = -1
        self._on_stop: Callable[[], None] = lambda: None
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1

    def install(self, on_stop: Callable[[], None]) -> None:
        self._on_stop = on_stop
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (*STOP_SIGNALS, *IGNORED_SIGNALS)}
        self._previous_wakeup_fd = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def restore(self) -> None:
        """The process's own handlers back, the pipe closed (a program that runs the worker
        again and again, as RQ's tests do, must not run out of fds)."""
        if self.wake_r < 0:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.close_pipe()

    def close_pipe(self) -> None:
        fds, self.wake_r, self.wake_w = (self.wake_r, self.wake_w), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _handle(self, signum: int, frame: object) -> None:
        if signum in IGNORED_SIGNALS:
            self.ignored.append(signum)
            return
        self.request_stop(cold=signum == signal.SIGINT)

    def request_stop(self, cold: bool = False) -> None:
        if cold or self.warm_stop_at is not None:
            self.cold = True
        if self.warm_stop_at is None:
            self.warm_stop_at = time.monotonic()
        self._on_stop()

    def wake(self) -> None:
        """Wake the main loop from another thread."""
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"s")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            while os.read(self.wake_r, 512):
                pass

    def wait(self, timeout: float, *fds: int) -> list[int]:
        """Wait until one of `fds` is readable, a signal arrives or `timeout` passes."""
        readable, _, _ = select.select([*fds, self.wake_r], [], [], max(0.0, timeout))
        self.drain()
        return readable

    def past_shutdown_timeout(self, now: float, shutdown_timeout: float) -> bool:
        return self.warm_stop_at is not None and now - self.warm_stop_at >= shutdown_timeout
