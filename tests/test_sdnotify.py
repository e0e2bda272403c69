"""systemd notification, against the real daemon: a datagram socket stands in for systemd.

The socket receives with SO_PASSCRED, so every message carries the sender's pid as the
kernel saw it: this is how we know forked work-horses never notify.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest

from tests.conftest import queue, wait_for
from worker.sdnotify import Notifier, SystemdNotifier, socket_address, watchdog_seconds
from worker.state import CurrentJob, LiveState, State

WATCHDOG_USEC = 2_000_000


class NotifySocket:
    """Binds a datagram socket like systemd's and records (time, sender pid, fields) per message."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if path is None:
            name = f"worker-test-{uuid.uuid4().hex[:12]}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.sock.bind(path)
            self.env_value = path
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, int, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        creds_size = struct.calcsize("iII")
        while not self._stop:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:creds_size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), pid, fields))

    def snapshot(self) -> list[tuple[float, int, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def times_of(self, key: str, value: str = "1") -> list[float]:
        return [t for t, _, f in self.snapshot() if f.get(key) == value]

    def statuses(self) -> list[str]:
        return [f["STATUS"] for _, _, f in self.snapshot() if "STATUS" in f]

    def wait(self, predicate, timeout: float = 20.0, message: str = "notification"):
        return wait_for(lambda: predicate(self.snapshot()), timeout=timeout, interval=0.05, message=message)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture()
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def has(key: str, value: str | None = None):
    return lambda msgs: any(key in f and (value is None or f[key] == value) for _, _, f in msgs)


def status_contains(text: str):
    return lambda msgs: any(text in f.get("STATUS", "") for _, _, f in msgs)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_protocol_variables_are_read_as_systemd_means_them():
    assert socket_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"
    assert socket_address("") is None and socket_address(None) is None
    assert socket_address("vsock:2:1234") is None  # a transport we do not speak: stay silent
    me = os.getpid()
    assert watchdog_seconds({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(me)}) == 2.0
    assert watchdog_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(me + 1)}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_seconds({}) is None


def test_a_forked_child_never_notifies(notify_socket):
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value})
    assert notifier.notify("STATUS=parent")
    pid = os.fork()
    if pid == 0:  # the child: like a work-horse, it inherited the notifier
        os._exit(0 if notifier.notify("STATUS=child") is False else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert notifier.notify("STATUS=parent again")
    notify_socket.wait(lambda m: len(m) >= 2, message="two parent messages")
    time.sleep(0.2)
    assert notify_socket.statuses() == ["parent", "parent again"]
    assert {pid for _, pid, _ in notify_socket.snapshot()} == {os.getpid()}
    notifier.close()


def test_a_job_cannot_add_an_assignment_to_a_status(notify_socket):
    """A function name with "\nWATCHDOG=trigger" used to arrive as an assignment of its own, which
    under the shipped unit fires the watchdog (SIGABRT); a NUL made systemd drop the message."""
    live = LiveState("w")
    systemd = SystemdNotifier(Notifier({"NOTIFY_SOCKET": notify_socket.env_value}))
    systemd.STATUS_MIN_INTERVAL = 0  # every change sent, so that each job's STATUS is seen
    live.listener = systemd
    live.set_state(State.IDLE)
    notify_socket.wait(has("READY", "1"), message="READY=1")
    jobs = [
        CurrentJob("j1", "worker.jobs.x\nWATCHDOG=trigger\nREADY=0", "default", time.monotonic(), 10),
        CurrentJob("j2\nSTOPPING=1", ["list\nWATCHDOG=trigger"], "default\rX=1", time.monotonic(), 10),
        CurrentJob("j3", "nul\x00WATCHDOG=trigger", "default", time.monotonic(), 10),
        CurrentJob("j4", "f" * 100_000, "default", time.monotonic(), 10),
    ]
    for i, job in enumerate(jobs):
        live.job_started(job)
        notify_socket.wait(lambda m, i=i: len(notify_socket.statuses()) >= 2 * i + 2, message=f"busy STATUS {i}")
        live.job_ended("failed", 0.1)
        notify_socket.wait(lambda m, i=i: len(notify_socket.statuses()) >= 2 * i + 3, message=f"idle STATUS {i}")
    assert Notifier({"NOTIFY_SOCKET": notify_socket.env_value}).notify("STATUS=direct\nWATCHDOG=trigger")
    notify_socket.wait(status_contains("direct"), message="the direct STATUS")
    msgs = notify_socket.snapshot()
    assert [set(f) for _, _, f in msgs] == [{"STATUS", "READY"}] + [{"STATUS"}] * (len(msgs) - 1)
    busy = [s for s in notify_socket.statuses() if s.startswith("busy")]
    assert busy[0].startswith("busy: job j1 (worker.jobs.x\\nWATCHDOG=trigger\\nREADY=0) on default")
    assert "j2\\nSTOPPING=1" in busy[1] and "default\\rX=1" in busy[1]
    assert "nul\\x00WATCHDOG=trigger" in busy[2]
    assert len(busy[3]) < 1000 and "...[100000 chars]" in busy[3]
    assert notify_socket.statuses()[-1] == "direct\\nWATCHDOG=trigger"


def test_ready_status_watchdog_and_stopping_from_the_real_daemon(start_worker, redis_conn, notify_socket):
    env = {
        "NOTIFY_SOCKET": notify_socket.env_value,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "EXTRA_JOBS": "tests.jobs_for_tests.sleep,tests.jobs_for_tests.getenv",
    }
    w = start_worker(extra_env=env)
    notify_socket.wait(has("READY", "1"), message="READY=1")
    ready = next(f for _, _, f in notify_socket.snapshot() if f.get("READY") == "1")
    assert ready["STATUS"].startswith("idle; 0 jobs done")
    # Before READY the daemon said what it was doing.
    assert notify_socket.statuses()[0].startswith("starting")

    # Idle: the main loop pings the watchdog at about half of WATCHDOG_USEC.
    notify_socket.wait(lambda m: len(notify_socket.times_of("WATCHDOG")) >= 4, message="four idle pings")
    # Busy: a burst of quick jobs spins the loop fast; pings stay rate-limited. Then a job
    # long enough to be seen in STATUS.
    q = queue(redis_conn)
    for i in range(39):
        q.enqueue("worker.jobs.ping", f"p{i}")
    # Jobs (and programs they start) do not inherit the protocol's variables.
    seen = q.enqueue("tests.jobs_for_tests.getenv", "NOTIFY_SOCKET")
    sleeper = q.enqueue("tests.jobs_for_tests.sleep", 2.5)
    busy = f"busy: job {sleeper.id} (tests.jobs_for_tests.sleep) on default"
    notify_socket.wait(status_contains(busy), message="busy STATUS with the job id")
    notify_socket.wait(status_contains("idle; 41 jobs done, 0 failed"), message="idle STATUS with the count")
    assert seen.get_status(refresh=True) == "finished" and seen.return_value() is None

    # SIGTERM during a job: STOPPING=1 at once, with a draining STATUS naming the job.
    last = q.enqueue("tests.jobs_for_tests.sleep", 2)
    wait_for(lambda: last.get_status(refresh=True) == "started", message="last job started")
    t_term = time.monotonic()
    w.signal(signal.SIGTERM)
    notify_socket.wait(has("STOPPING", "1"), timeout=5, message="STOPPING=1")
    stopping = next(f for _, _, f in notify_socket.snapshot() if f.get("STOPPING") == "1")
    assert stopping["STATUS"] == f"draining: finishing job {last.id}; 41 jobs done, 0 failed"
    assert w.wait(30) == 0
    assert last.get_status(refresh=True) == "finished"
    assert notify_socket.statuses()[-1] == "stopped after 42 jobs"

    msgs = notify_socket.snapshot()
    # Every message came from the daemon's own process: never from one of its 42 horses.
    assert {pid for _, pid, _ in msgs} == {w.proc.pid}
    assert sum(1 for _, _, f in msgs if f.get("READY") == "1") == 1
    pings = [t for t in notify_socket.times_of("WATCHDOG") if t < t_term]
    assert len(pings) >= 8, pings
    pace = gaps(pings)
    # Rate-limited to a quarter of the timeout at most (0.5 s), even through the burst of
    # jobs, and never late enough for systemd's watchdog (2 s) to fire.
    assert min(pace) >= 0.45, pace
    assert max(pace) < WATCHDOG_USEC / 1e6, pace


def test_a_watchdog_meant_for_another_pid_is_not_pinged(start_worker, notify_socket):
    start_worker(
        extra_env={"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"}
    )
    notify_socket.wait(has("READY", "1"), message="READY=1")
    time.sleep(2.5)
    assert notify_socket.times_of("WATCHDOG") == []


def test_ready_waits_for_the_model(start_worker, notify_socket, tmp_path):
    empty = tmp_path / "no-model"
    empty.mkdir()
    env = {"NOTIFY_SOCKET": notify_socket.env_value, "EMBED_MODEL_DIR": str(empty)}
    w = start_worker(ready=False, extra_env=env)
    notify_socket.wait(status_contains("starting: waiting for model"), message="waiting-for-model STATUS")
    time.sleep(1.5)
    assert not has("READY")(notify_socket.snapshot())
    assert w.get("/readyz")[0] == 503
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    assert has("STOPPING", "1")(notify_socket.snapshot())


def test_a_hung_main_loop_stops_the_watchdog_pings(start_worker, redis_conn, notify_socket):
    """A real hang, without test hooks: the daemon logs to a pipe nobody reads. Once the
    pipe is full, its next log line blocks the main loop, and the pings must stop.

    Only the parent may fill the pipe: a horse blocked on it would leave the main loop ticking
    (rightly: that is a stuck job, not a stuck loop). So: LOG_LEVEL=WARNING, and jobs whose
    horse dies at once without a word, which the parent reports at WARNING."""
    w = start_worker(
        ready=False,
        stderr=subprocess.PIPE,
        extra_env={
            "NOTIFY_SOCKET": notify_socket.env_value,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "LIVENESS_TIMEOUT": "3",
            "LOG_LEVEL": "WARNING",
        },
    )
    fcntl.fcntl(w.proc.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    drained: list[bytes] = []
    try:
        notify_socket.wait(has("READY", "1"), message="READY=1")
        time.sleep(1.5)
        assert notify_socket.times_of("WATCHDOG"), "pinging before the hang"
        q = queue(redis_conn)
        jobs = [q.enqueue("tests.jobs_for_tests.crash", 9) for _ in range(60)]

        def hung_for(seconds: float) -> bool:
            pings = notify_socket.times_of("WATCHDOG")
            return bool(pings) and time.monotonic() - pings[-1] > seconds

        wait_for(lambda: hung_for(3 * WATCHDOG_USEC / 1e6 / 2), timeout=30, message="pings to stop")
        assert w.proc.poll() is None  # alive, just stuck: exactly what only a watchdog catches
        wait_for(lambda: w.get("/healthz")[0] == 503, timeout=10, message="liveness to fail")  # it agrees
        assert w.proc.poll() is None
        ended_while_hung = sum(j.get_status(refresh=True) == "failed" for j in jobs)
        assert ended_while_hung < len(jobs)
    finally:
        reader = threading.Thread(target=lambda: drained.append(w.proc.stderr.read()), daemon=True)
        reader.start()
    # Unblocked: the loop runs again, pings resume, the jobs complete.
    t_drain = time.monotonic()
    notify_socket.wait(
        lambda m: any(t > t_drain for t in notify_socket.times_of("WATCHDOG")), message="pings to resume"
    )
    wait_for(
        lambda: sum(j.get_status(refresh=True) == "failed" for j in jobs) > ended_while_hung + 5,
        timeout=60,
        message="jobs to go on ending",
    )
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    reader.join(5)


def test_a_redis_outage_keeps_the_watchdog_fed_and_shows_in_status(start_worker, notify_socket, tmp_path):
    """Restarting a worker never fixes Redis: during an outage the loop keeps pinging."""
    from worker.devredis import RedisServer

    server = RedisServer(directory=tmp_path / "own-redis").start()
    try:
        env = {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC), "REDIS_URL": server.url}
        w = start_worker(extra_env=env)
        notify_socket.wait(has("READY", "1"), message="READY=1")
        server.kill()
        t_down = time.monotonic()
        notify_socket.wait(status_contains("Redis unavailable"), message="outage in STATUS")
        notify_socket.wait(
            lambda m: len([t for t in notify_socket.times_of("WATCHDOG") if t >= t_down]) >= 3,
            message="three pings during the outage",
        )
        pings = [t for t in notify_socket.times_of("WATCHDOG") if t >= t_down]
        assert len(pings) >= 3, pings
        assert max(gaps([t_down, *pings, time.monotonic()])) < WATCHDOG_USEC / 1e6
        assert w.proc.poll() is None
        server = RedisServer(port=server.port, directory=tmp_path / "own-redis").start()
        notify_socket.wait(
            lambda m: notify_socket.statuses()[-1].startswith("idle; "), timeout=40, message="STATUS back to idle"
        )
        w.signal(signal.SIGTERM)
        assert w.wait(30) == 0
    finally:
        server.stop()
