"""A fuzzer for what a producer can write to Redis.

Whoever can write to Redis can write any field of a job hash, any queue or registry entry, a
worker's hash and a command message. `matrix(seed)` builds cases from hostile values (JSON null,
lists, numbers, NaN, invalid UTF-8, huge, deeply nested, control characters, newlines) and random
ones, deterministically from the seed. `Fuzzer` writes them into a real Redis while a real worker
process is suspended (`rq.suspension.suspend`), resumes it and watches: the worker must not exit,
its /healthz must stay 200 with a fresh heartbeat, every job must reach an end state (finished,
failed, stopped, canceled; or scheduled for a retry or repeat), and a normal job must run after
them. Rounds with entries that are not jobs also restart the worker (warm stop, fresh start), so
that its start-up maintenance reads them too.

Every case prints as `seed=S case=N kind:target = label [value preview]`; reproduce one with
`.venv/bin/python -m tests.fuzz --seed S --case N` (its own Redis and worker), list the matrix
with `--list`, or run it all and print a table of what fails with `--full` (`--sample`: the
sample `make test` runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Queue, Repeat, Retry
from rq.command import PUBSUB_CHANNEL_TEMPLATE, send_stop_job_command
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend
from rq.utils import utcformat

PING = "worker.jobs.ping"
FAIL = "tests.jobs_for_tests.fail"
SLEEP = "tests.jobs_for_tests.sleep"
END_STATES = ("finished", "failed", "stopped", "canceled")

# The worker under test: fast timeouts so that a stall shows within the bounds below.
WORKER_ENV = {
    "JOB_TIMEOUT": "10",
    "MAX_JOB_TIMEOUT": "10",
    "JOB_GRACE": "10",
    "LIVENESS_TIMEOUT": "10",
    "SHUTDOWN_TIMEOUT": "2",
    "DEAD_WORKER_AFTER": "4",
    "RETRY_INTERVALS": "1",
}
HEARTBEAT_BOUND = 10.0  # seconds: /healthz heartbeat_age_seconds above this is a stall
HEALTHZ_SILENCE = 5.0  # seconds without an answer from /healthz is a stall
JOB_BOUND = 40.0  # seconds after resume for every job of a round to end (plus 0.05 s a job)
SETTLE = 3.0  # seconds a round with entries is watched at least (several sweeps at DEAD_WORKER_AFTER=4)

# Every field RQ 3.0's Job.to_dict writes or Job.restore reads, and one it does not know.
JOB_FIELDS = [
    "data",
    "meta",
    "timeout",
    "status",
    "origin",
    "description",
    "created_at",
    "enqueued_at",
    "started_at",
    "ended_at",
    "last_heartbeat",
    "worker_name",
    "group_id",
    "result_ttl",
    "failure_ttl",
    "ttl",
    "retries_left",
    "number_of_retries",
    "retry_intervals",
    "enqueue_at_front_on_retry",
    "repeats_left",
    "repeat_intervals",
    "dependency_id",
    "dependency_ids",
    "allow_dependency_failures",
    "enqueue_at_front",
    "success_callback_name",
    "failure_callback_name",
    "stopped_callback_name",
    "success_callback_timeout",
    "failure_callback_timeout",
    "stopped_callback_timeout",
    "webhooks",
    "result",
    "exc_info",
    "rate_limit_key",
    "rate_limit_concurrency",
    "x_unknown_field",
]
# Fields read when a job fails: these are also fuzzed on a job that fails.
FAILURE_FIELDS = [
    "meta",
    "retries_left",
    "number_of_retries",
    "retry_intervals",
    "enqueue_at_front_on_retry",
    "failure_callback_name",
    "failure_callback_timeout",
    "failure_ttl",
    "webhooks",
    "exc_info",
]
# A job whose hash says one of these may be deleted once it ends (RQ's TTL semantics).
MAY_VANISH = ("result_ttl", "failure_ttl", "ttl")
REGISTRIES = {"started": "wip", "scheduled": "scheduled", "failed": "failed", "deferred": "deferred"}
WORKER_FIELDS = [
    "last_heartbeat",
    "birth",
    "state",
    "current_job",
    "queues",
    "pid",
    "death",
    "hostname",
    "ip_address",
    "version",
    "python_version",
    "successful_job_count",
    "failed_job_count",
    "total_working_time",
    "current_job_working_time",
    "heartbeats_while_busy",
]


def _deep(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


def hostile_values(huge: int = 2_000_000, depth: int = 100_000) -> list[tuple[str, bytes | None]]:
    """(label, raw bytes) a producer may write into a field; None means the field is deleted."""
    return [
        ("JSON null", b"null"),
        ("JSON list", b"[1, 2]"),
        ("JSON object", b'{"a": {"b": [null]}}'),
        ("JSON string", b'"x"'),
        ("JSON true", b"true"),
        ("number 3", b"3"),
        ("number -1", b"-1"),
        ("number 0", b"0"),
        ("number 0.5", b"0.5"),
        ("number 10**12", b"1000000000000"),
        ("5000 digits", b"9" * 5000),
        ("NaN", b"NaN"),
        ("Infinity", b"Infinity"),
        ("-Infinity", b"-Infinity"),
        ("1e309", b"1e309"),
        ("empty", b""),
        ("not JSON", b"not json"),
        ("invalid UTF-8", b"\xff\xfe\x80"),
        ("pickle", pickle.dumps({"a": 1}, protocol=4)),
        ("lone surrogate (JSON escape)", b'"\\ud800"'),
        ("lone surrogate (raw)", "\ud800".encode("utf-8", "surrogatepass")),
        ("NUL", b"\x00"),
        ("terminal escapes", b"\x1b[2J\x1b[31mred\x07"),
        ("newline + sd_notify", b"a\nWATCHDOG=trigger\nSTATUS=forged"),
        ("CRLF + forged log line", b"x\r\n2026-12-03 00:00:00 ERROR forged line"),
        ("date in year 9999", b"9999-12-31T23:59:59.999999Z"),
        ("date 1970", b"1970-01-01T00:00:00Z"),
        ("word 'yesterday'", b"yesterday"),
        ("id RQ refuses", b"bad id!"),
        ("forbidden dotted name", b"os.system"),
        (f"deep list x{depth}", _deep(depth)),
        (f"deep object x{depth // 2}", _deep(depth // 2, b'{"a":', b"}").replace(b":}", b":1}", 1)),
        (f"huge JSON string {huge} B", b'"' + b"x" * huge + b'"'),
        (f"huge raw {huge} B", b"7" * huge),
        ("field deleted", None),
    ]


_ALPHABET = 'ab:.-_ \x00\n\r\t\x1b[]{}",\\é€\u2028\U0001f600'


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def random_json(rng: random.Random, depth: int = 0) -> object:
    """A random JSON-able value, NaN and infinities included (Python's json writes them)."""
    r = rng.random()
    if depth > 4 or r < 0.45:
        return rng.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                2**63,
                -(2**64),
                rng.randint(-(10**6), 10**6),
                float("nan"),
                float("inf"),
                -float("inf"),
                1e308,
                rng.uniform(-1e6, 1e6),
                _random_text(rng, rng.randint(0, 20)),
            ]
        )
    if r < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_random_text(rng, rng.randint(0, 6)): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_value(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["json", "json", "bytes", "text"])
    if kind == "json":
        raw = json.dumps(random_json(rng)).encode()
    elif kind == "bytes":
        raw = rng.randbytes(rng.choice([1, 8, 64, 1024]))
    else:
        raw = _random_text(rng, rng.randint(1, 40)).encode("utf-8", "surrogatepass")
    return f"random {kind}", raw


def _payload(func: object, instance: object = None, args: object = None, kwargs: object = None) -> bytes:
    """A job's `data`: zlib-compressed JSON [func_name, instance, args, kwargs], as RQ writes it."""
    return zlib.compress(
        json.dumps([func, instance, [] if args is None else args, {} if kwargs is None else kwargs]).encode()
    )


def zlib_bomb(unpacked: int) -> bytes:
    """A valid payload whose one argument is `unpacked` bytes long: about 1/1000 of that in Redis."""
    z = zlib.compressobj(9)
    out = [z.compress(b'["worker.jobs.ping", null, ["')]
    block = b"a" * (1 << 20)
    for _ in range(unpacked // len(block)):
        out.append(z.compress(block))
    out.append(z.compress(b'"], {}]'))
    out.append(z.flush())
    return b"".join(out)


def data_values(bomb: int, depth: int = 100_000) -> list[tuple[str, bytes, int | None]]:
    """(label, data, known case) for the `data` field: hostile inside the JSON payload too."""
    deep_args = b'["worker.jobs.ping", null, ' + _deep(depth) + b", {}]"
    return [
        ("func_name a JSON list", _payload(["worker.jobs.ping"]), 6),
        ("func_name a JSON object", _payload({"f": "worker.jobs.ping"}), 6),
        ("func_name null", _payload(None), None),
        ("func_name a number", _payload(42), None),
        ("func_name empty", _payload(""), None),
        ("func_name 100 KB", _payload("worker.jobs." + "p" * 100_000), 12),
        ("func_name with newline + WATCHDOG", _payload("worker.jobs.ping\nWATCHDOG=trigger"), 8),
        ("func_name with CRLF + forged log line", _payload("x\r\n2026-12-03 00:00:00 ERROR forged"), 16),
        ("func_name with terminal escapes", _payload("\x1b[2J\x1b[31mworker.jobs.ping"), 16),
        ("func_name with NUL", _payload("worker.jobs.\x00ping"), None),
        ("func_name a lone surrogate", _payload("worker.jobs.\ud800"), None),
        ("func_name os.system", _payload("os.system", args=["true"]), None),
        ("instance not null", _payload(PING, instance={"a": 1}), None),
        ("args a JSON object", _payload(PING, args={"message": "x"}), None),
        ("args a string", _payload(PING, args="abc"), None),
        ("args null", zlib.compress(b'["worker.jobs.ping", null, null, {}]'), None),
        ("args a number", _payload(PING, args=5), None),
        ("args [NaN]", _payload(PING, args=[float("nan")]), None),
        ("args [Infinity]", _payload(PING, args=[float("inf")]), None),
        ("args [a lone surrogate]", _payload(PING, args=["\ud800"]), None),
        ("args [5000 digits]", zlib.compress(b'["worker.jobs.ping", null, [' + b"9" * 5000 + b"], {}]"), None),
        (f"args nested {depth} deep", zlib.compress(deep_args), None),
        ("args 10**6 items", _payload(PING, args=[0] * 1_000_000), None),
        ("kwargs a list", _payload(PING, kwargs=[1, 2]), None),
        ("kwargs null", zlib.compress(b'["worker.jobs.ping", null, [], null]'), None),
        ("kwargs a string", _payload(PING, kwargs="k"), None),
        ("kwargs unknown name", _payload(PING, kwargs={"nope": 1}), None),
        ("kwargs key with NUL and newline", _payload(PING, kwargs={"a\x00\nb": 1}), None),
        ("payload []", zlib.compress(b"[]"), None),
        ("payload [func] only", zlib.compress(b'["worker.jobs.ping"]'), None),
        ("payload 5 items", zlib.compress(b'["worker.jobs.ping", null, [], {}, 1]'), None),
        ("payload a JSON object", zlib.compress(b'{"func": "worker.jobs.ping"}'), None),
        ("payload JSON null", zlib.compress(b"null"), None),
        ("payload not compressed", b'["worker.jobs.ping", null, ["raw"], {}]', None),
        ("payload truncated zlib", _payload(PING)[:-4], None),
        ("payload zlib of invalid UTF-8", zlib.compress(b"\xff\xfe\x80"), None),
        ("payload zlib of pickle", zlib.compress(pickle.dumps((PING, None, [], {}), protocol=4)), None),
        (f"zlib bomb {bomb >> 20} MB unpacked", zlib_bomb(bomb), 7),
    ]


def preview(value: bytes | None, limit: int = 60) -> str:
    if value is None:
        return "<deleted>"
    text = repr(value[:limit])
    return text + (f"... ({len(value)} bytes)" if len(value) > limit else "")


@dataclass(frozen=True)
class Case:
    """One hostile write. `kind`: field (one job-hash field), data (the payload), client (RQ's
    client with hostile options), queue (an odd queue entry), registry (an odd member/score),
    worker (one field of a fake worker's hash), command (a message on a worker's channel),
    midrun (a field of a running job, then its horse SIGKILLed), warmstop (hostile meta on a
    job running when the worker is told to stop past SHUTDOWN_TIMEOUT)."""

    seed: int
    n: int
    kind: str
    target: str
    label: str
    value: bytes | None = None
    func: str = PING
    score: float | None = None
    known: int | None = None

    def __str__(self) -> str:
        parts = [f"seed={self.seed} case={self.n} {self.kind}:{self.target} = {self.label} [{preview(self.value)}]"]
        if self.kind == "field" and self.func != PING:
            parts.append(f"func={self.func}")
        if self.score is not None:
            parts.append(f"score={self.score!r}")
        if self.known is not None:
            parts.append(f"(known case {self.known})")
        return " ".join(parts)


# known cases (numbered) a field value reproduces directly
_FIELD_KNOWN = {("meta", "JSON null"): 1, ("meta", "JSON list"): 1, ("meta", "number 3"): 1}
CLIENT_CASES = [
    ("Retry(max=3, interval=10**12) on a job that times out", 4),
    ("Repeat(times=2, interval=10**12)", 4),
    ("meta=[1, 2]", 5),
    ("job_timeout=-1", None),
    ("job_timeout=10**9", None),
    ("result_ttl=-1, failure_ttl=0, ttl=1", None),
    ("description with newline and escapes", 16),
    ("on_success=Callback('os.system', timeout=10**12)", None),
    ("on_failure=Callback('builtins.print') on a failing job", None),
]
ODD_IDS: list[tuple[str, bytes]] = [
    ("id RQ refuses", b"bad id!"),
    ("empty id", b""),
    ("id with colons", b"a:b:c"),
    ("NUL id", b"\x00"),
    ("invalid UTF-8 id", b"\xff\xfe"),
    ("100 KB id", b"x" * 100_000),
    ("path-like id", b"../../x"),
    ("id with newline + WATCHDOG", b"nl\nWATCHDOG=trigger"),
    ("id with terminal escapes", b"\x1b[2J\x1b[31mred"),
    ("id 'null'", b"null"),
]
QUEUE_VARIANTS = {
    "no hash": None,
    "with a job hash": 2,  # a valid job hash under the odd id
    "key of the wrong type": None,  # rq:job:<id> is a string
}
SCORES = [("expired", -1000.0), ("future", 1000.0), ("0", 0.0), ("-inf", float("-inf")), ("inf", float("inf"))]
COMMANDS: list[tuple[str, bytes, int | None]] = [
    ("not JSON", b"not json", 11),
    ("JSON null", b"null", 11),
    ("JSON list", b"[1, 2]", 11),
    ("JSON number", b"3", 11),
    ("invalid UTF-8", b"\xff\xfe", 11),
    ("empty", b"", 11),
    ("command null", b'{"command": null}', None),
    ("command a list", b'{"command": ["stop-job"]}', None),
    ("unknown command", b'{"command": "explode"}', None),
    ("stop-job without job_id", b'{"command": "stop-job"}', None),
    ("stop-job job_id null", b'{"command": "stop-job", "job_id": null}', None),
    ("stop-job job_id an object", b'{"command": "stop-job", "job_id": {"a": 1}}', None),
    ("stop-job of an id RQ refuses", b'{"command": "stop-job", "job_id": "bad id!"}', None),
    ("kill-horse while idle", b'{"command": "kill-horse"}', None),
    ("deep JSON", b'{"command": ' + _deep(100_000) + b"}", None),
    ("huge message", b'{"command": "' + b"x" * 2_000_000 + b'"}', None),
]
MIDRUN_STATUS = [
    ("status 'bogus'", b"bogus", 9),
    ("status JSON null", b"null", 9),
    ("status invalid UTF-8", b"\xff", 9),
    ("status deleted", None, 9),
]
WARMSTOP_META = [
    ("meta=[1, 2]", b"[1, 2]", 5),
    ("meta null", b"null", 5),
    ("meta 3", b"3", 5),
    ("meta not JSON", b"x", 5),
]


def matrix(seed: int, *, bomb: int = 1 << 30, randoms: int = 2) -> list[Case]:
    """Every case, in a fixed order; `randoms` random values per job field and per worker field."""
    rng = random.Random(seed)
    cases: list[Case] = []

    def add(**kw) -> None:
        cases.append(Case(seed=seed, n=len(cases), **kw))

    values = hostile_values()
    for name in JOB_FIELDS:
        extra = [random_value(rng) for _ in range(randoms)]
        for func in [PING, FAIL] if name in FAILURE_FIELDS else [PING]:
            for label, raw in values + extra:
                add(kind="field", target=name, label=label, value=raw, func=func, known=_FIELD_KNOWN.get((name, label)))
    for label, raw, known in data_values(bomb):
        add(kind="data", target="data", label=label, value=raw, known=known)
    for label, known in CLIENT_CASES:
        add(kind="client", target="rq-client", label=label, known=known)
    for variant, known in QUEUE_VARIANTS.items():
        for label, raw in ODD_IDS:
            add(
                kind="queue",
                target=f"default, {variant}",
                label=label,
                value=raw,
                known=known if raw == b"bad id!" else None,
            )
    for reg in REGISTRIES:
        for label, raw in [
            *ODD_IDS,
            ("member of a queued job, odd execution", b"<job>:x:y"),
            ("job:execution with garbage execution hash", b"<job>:<exec>"),
        ]:
            for score_label, score in SCORES:
                known = None
                if score_label == "expired" and (reg, raw) in (("started", b"a:b:c"), ("scheduled", b"bad id!")):
                    known = 10 if reg == "started" else 2
                add(kind="registry", target=f"{reg} ({score_label})", label=label, value=raw, score=score, known=known)
    for name in WORKER_FIELDS:
        extra = [random_value(rng) for _ in range(randoms)]
        for label, raw in values + extra:
            known = 10 if name == "last_heartbeat" and raw == b"yesterday" else None
            add(kind="worker", target=name, label=label, value=raw, known=known)
    for label, raw in ODD_IDS:
        add(kind="worker", target="name", label=label, value=raw)
    for label, raw in ODD_IDS:
        add(kind="worker", target="inflight", label=label, value=raw)
    for label, raw, known in COMMANDS:
        add(kind="command", target="rq:pubsub:<worker>", label=label, value=raw, known=known)
    for _ in range(8):
        label, raw = random_value(rng)
        add(kind="command", target="rq:pubsub:<worker>", label=label, value=raw)
    for label, raw, known in MIDRUN_STATUS:
        add(kind="midrun", target="status", label=label, value=raw, func=SLEEP, known=known)
    for label, raw, known in WARMSTOP_META:
        add(kind="warmstop", target="meta", label=label, value=raw, func=SLEEP, known=known)
    return cases


def sample(seed: int, per_kind: int = 3) -> list[Case]:
    """A few dozen cases for `make test`: every known case and `per_kind` random ones
    of each kind (seeded), with a 64 MB zlib bomb instead of 1 GB and only one warm stop."""
    every = matrix(seed, bomb=64 << 20)
    rng = random.Random(seed)
    picked = {c.n for c in every if c.known is not None and c.kind not in ("warmstop", "midrun")}
    picked.add(next(c.n for c in every if c.kind == "warmstop"))
    for kind in ("field", "data", "client", "queue", "registry", "worker", "command", "midrun"):
        of_kind = [c.n for c in every if c.kind == kind and c.n not in picked]
        k = 1 if kind == "midrun" else per_kind  # each costs a few seconds
        picked.update(rng.sample(of_kind, min(k, len(of_kind))))
    return [c for c in every if c.n in picked]


class NoWorker(Exception):
    """No worker process would start: the run cannot go on."""


@dataclass
class Finding:
    case: Case | None  # None: the round, not one case
    problem: str

    def __str__(self) -> str:
        return f"{self.case if self.case else 'round'}: {self.problem}"


@dataclass
class Round:
    cases: list[Case]
    jobs: dict[str, Case] = field(default_factory=dict)  # tracked job id -> the case it belongs to
    cleanups: list[Callable[[], object]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    queue_entries: list[tuple[str, bytes, Case]] = field(default_factory=list)

    def add(self, case: Case | None, problem: str) -> None:
        problem = " / ".join(line.strip() for line in problem.splitlines() if line.strip())
        if not any(f.case == case and f.problem == problem for f in self.findings):
            self.findings.append(Finding(case, problem))


class Fuzzer:
    """Runs cases in rounds against one worker process at a time (a new one only when it exits
    or a round restarts it). `start(env)` starts a worker (tests.conftest.WorkerProcess) and
    returns it once it answers /healthz."""

    def __init__(self, conn: Redis, start: Callable[..., object], log: Callable[[str], None] = print) -> None:
        self.conn = conn
        self.start = start
        self.log = log
        self.worker = None
        self.name = ""
        self.generation = 0
        self.q = Queue("default", connection=conn, serializer=JSONSerializer)
        self.jobs: dict[str, Case] = {}  # every job tracked so far: a late exit is still tied to its case

    # -- the worker ----------------------------------------------------------------------
    def _new_worker(self, ready: bool = True):
        self.generation += 1
        self.name = f"fuzz-{uuid.uuid4().hex[:6]}-{self.generation}"
        self.worker = self.start(extra_env={**WORKER_ENV, "WORKER_NAME": self.name}, ready=False)
        if ready:
            self.worker.wait_ready(30)
        return self.worker

    def _ensure_worker(self, rnd: Round):
        """The running worker, or a new one. One that will not start is a finding; the round's
        entries are then removed (what stops every start must not stop the rest of the run)."""
        if self.worker is not None and self.worker.proc.poll() is None:
            return self.worker
        for attempt in range(3):
            w = self._new_worker(ready=False)
            try:
                w.wait_ready(30)
                return w
            except AssertionError as exc:
                rnd.add(None, f"worker did not start (exit {w.proc.returncode}): {str(exc)[-300:]}")
                with contextlib.suppress(Exception):
                    w.stop()
                if attempt == 0:
                    self._cleanup(rnd)
        raise NoWorker("no worker would start, even with this round's entries removed")

    def _cleanup(self, rnd: Round) -> None:
        for cleanup in rnd.cleanups:
            with contextlib.suppress(RedisError):
                cleanup()
        rnd.cleanups.clear()

    # -- one round -----------------------------------------------------------------------
    def run(self, cases: list[Case], rounds: list[list[Case]] | None = None, isolate: bool = True) -> list[Finding]:
        """Run `cases` in `rounds` (default: grouped by kind and target); a round whose trouble
        cannot be tied to one case is run again case by case when `isolate`, else reported with
        the numbers of its cases."""
        findings: list[Finding] = []
        try:
            for group in rounds if rounds is not None else group_rounds(cases):
                rnd = self._round(group)
                loose = [f for f in rnd.findings if f.case is None]
                if len(group) == 1:
                    findings += [Finding(group[0], f.problem) if f.case is None else f for f in rnd.findings]
                elif loose and isolate:
                    self.log(f"round of {len(group)} cases: {'; '.join(f.problem for f in loose)}; isolating")
                    findings += [f for f in rnd.findings if f.case is not None]
                    for case in group:
                        alone = self._round([case])
                        findings += [Finding(case, f.problem) if f.case is None else f for f in alone.findings]
                else:
                    ns = ",".join(str(c.n) for c in group)
                    findings += [
                        f if f.case else Finding(None, f"{f.problem} [one of cases {ns}]") for f in rnd.findings
                    ]
        except NoWorker as exc:
            findings.append(Finding(None, f"run aborted: {exc}"))
        return findings

    def _round(self, cases: list[Case]) -> Round:
        rnd = Round(cases)
        t0 = time.monotonic()
        self.log(f"round: {len(cases)} cases, first {cases[0]}")
        try:
            self._play(rnd)
        finally:
            self._cleanup(rnd)
        for f in rnd.findings:
            self.log(f"  FAIL {f}")
        self.log(f"  round done in {time.monotonic() - t0:.1f} s")
        return rnd

    def _play(self, rnd: Round) -> None:
        cases = rnd.cases
        self._ensure_worker(rnd)
        suspend(self.conn)
        try:
            if not self._wait(lambda: self._worker_state() == "suspended", 20, rnd):
                rnd.add(None, "worker did not report `suspended` within 20 s")
            for case in cases:
                try:
                    self._apply(case, rnd)
                except Exception as exc:  # noqa: BLE001 (the harness reports and goes on)
                    rnd.add(case, f"could not apply the case: {type(exc).__name__}: {exc}"[:300])
            probe = self.q.enqueue(PING, "probe after the hostile writes")
        finally:
            resume(self.conn)
        warm = [c for c in cases if c.kind == "warmstop"]
        if warm:
            self._warm_stop(rnd, warm[0])
        for case in cases:
            if case.kind == "midrun":
                self._mid_run(rnd, case)
        started = time.monotonic()
        bound = JOB_BOUND + 0.05 * len(rnd.jobs)
        has_entries = any(c.kind in ("queue", "registry", "worker") for c in cases)
        settle = SETTLE if has_entries else 0
        self._watch(rnd, bound, lambda: self._all_done(rnd, probe.id) and time.monotonic() - started >= settle)
        if has_entries:
            self._restart(rnd)
        if any(c.kind == "command" for c in cases):
            self._command_still_works(rnd)
        self._verdicts(rnd, probe.id)
        if self.worker.proc.poll() is None and (peak := _peak_rss_mb(self.worker.proc.pid)):
            self.log(f"  worker peak RSS {peak} MB")

    def _worker_state(self) -> str:
        raw = self.conn.hget(f"rq:worker:{self.name}", "state")
        return raw.decode(errors="replace") if raw else ""

    def _wait(self, predicate: Callable[[], bool], timeout: float, rnd: Round) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker.proc.poll() is not None:
                self._exited(rnd)
                self._ensure_worker(rnd)
            if predicate():
                return True
            time.sleep(0.1)
        return False

    # -- writing the cases ---------------------------------------------------------------
    def _enqueue(self, rnd: Round, case: Case, func: str = PING, *args, **kw) -> Job:
        if not args and func == PING:
            args = (f"fuzz case {case.n}",)
        elif not args and func == FAIL:
            args = (f"fuzz case {case.n} fails",)
        job = self.q.enqueue(func, *args, result_ttl=600, failure_ttl=600, **kw)
        rnd.jobs[job.id] = self.jobs[job.id] = case
        return job

    def _apply(self, case: Case, rnd: Round) -> None:
        conn = self.conn
        if case.kind == "field":
            job = self._enqueue(rnd, case, case.func)
            if case.value is None:
                conn.hdel(job.key, case.target)
            else:
                conn.hset(job.key, case.target, case.value)
        elif case.kind == "data":
            job = self._enqueue(rnd, case)
            conn.hset(job.key, "data", case.value)
        elif case.kind == "client":
            self._client(case, rnd)
        elif case.kind == "queue":
            self._queue_entry(case, rnd)
        elif case.kind == "registry":
            self._registry_entry(case, rnd)
        elif case.kind == "worker":
            self._worker_hash(case, rnd)
        elif case.kind == "command":
            pass  # published once the worker runs again (after resume), see _command_still_works
        elif case.kind == "warmstop":
            job = self._enqueue(rnd, case, SLEEP, 3.0)
            conn.hset(job.key, "meta", case.value)
        elif case.kind == "midrun":
            self._enqueue(rnd, case, SLEEP, 3.0)  # its field is written once it runs, see _mid_run
        else:
            raise ValueError(case.kind)

    def _client(self, case: Case, rnd: Round) -> None:
        label = case.label
        if label.startswith("Retry"):
            self._enqueue(rnd, case, SLEEP, 30, job_timeout=1, retry=Retry(max=3, interval=10**12))
        elif label.startswith("Repeat"):
            self._enqueue(rnd, case, PING, "repeat", repeat=Repeat(times=2, interval=10**12))
        elif label == "meta=[1, 2]":
            self._enqueue(rnd, case, PING, "meta", meta=[1, 2])
        elif label == "job_timeout=-1":
            self._enqueue(rnd, case, PING, "t", job_timeout=-1)
        elif label == "job_timeout=10**9":
            self._enqueue(rnd, case, PING, "t", job_timeout=10**9)
        elif label.startswith("result_ttl"):
            job = self.q.enqueue(PING, "ttl", result_ttl=-1, failure_ttl=0, ttl=1)
            rnd.jobs[job.id] = self.jobs[job.id] = case
        elif label.startswith("description"):
            self._enqueue(rnd, case, PING, "d", description="d\nWATCHDOG=trigger\x1b[2J\r\nforged")
        elif label.startswith("on_success"):
            self._enqueue(rnd, case, PING, "cb", on_success=Callback("os.system", timeout=10**12))
        elif label.startswith("on_failure"):
            self._enqueue(rnd, case, FAIL, "cb", on_failure=Callback("builtins.print"))
        else:
            raise ValueError(label)

    def _queue_entry(self, case: Case, rnd: Round) -> None:
        conn, job_id = self.conn, case.value
        key = self.q.key
        hash_key = b"rq:job:" + job_id
        if "with a job hash" in case.target:
            model = self.q.enqueue(PING, f"fuzz case {case.n} (model hash)")
            conn.lrem(key, 0, model.id)
            conn.delete(model.key)
            conn.hset(hash_key, mapping=model.to_dict())
            rnd.cleanups.append(lambda: conn.delete(hash_key))
        elif "wrong type" in case.target:
            conn.set(hash_key, b"not a hash")
            rnd.cleanups.append(lambda: conn.delete(hash_key))
        conn.lpush(key, job_id)
        rnd.queue_entries.append((key, job_id, case))
        rnd.cleanups.append(lambda: conn.lrem(key, 0, job_id))

    def _registry_entry(self, case: Case, rnd: Round) -> None:
        conn = self.conn
        reg = case.target.split(" ")[0]
        key = f"rq:{REGISTRIES[reg]}:default"
        member = case.value
        if b"<job>" in member:
            job = self._enqueue(rnd, case)
            member = member.replace(b"<job>", job.id.encode())
            if b"<exec>" in member:
                exec_id = uuid.uuid4().hex
                member = member.replace(b"<exec>", exec_id.encode())
                ekey = f"rq:execution:{job.id}:{exec_id}"
                conn.hset(
                    ekey,
                    mapping={"id": exec_id, "created_at": "soon", "last_heartbeat": b"\xff", "worker_name": "\x1b[2J"},
                )
                rnd.cleanups.append(lambda: conn.delete(ekey))
        score = time.time() + case.score if case.score in (-1000.0, 1000.0) else case.score
        conn.zadd(key, {member: score})
        rnd.cleanups.append(lambda: conn.zrem(key, member))
        if reg == "started":  # the sweep walks this registry: it must still recover a dead worker's job
            self._worker_hash(Case(case.seed, case.n, "worker", "hostname", "benign", b"elsewhere"), rnd)
            last = next(reversed(rnd.jobs))
            rnd.jobs[last] = self.jobs[last] = case

    def _worker_hash(self, case: Case, rnd: Round) -> None:
        """A fake worker of ours, dead an hour ago, owning a started job (which the sweep must
        put back and run), with one field hostile; or an odd worker name."""
        conn = self.conn
        name = case.value if case.target == "name" else f"fuzz-dead-{case.n}".encode()
        key = b"rq:worker:" + name
        job = self._enqueue(rnd, case)
        hour_ago = utcformat(datetime.now(UTC) - timedelta(hours=1))
        fields = {
            "name": name,
            "queues": "default",
            "pid": "999999",
            "hostname": "elsewhere",
            "ip_address": "10.0.0.1",
            "birth": hour_ago,
            "last_heartbeat": hour_ago,
            "state": "busy",
            "current_job": job.id,
            "version": "3.0.0",
            "python_version": "3.11",
            "successful_job_count": "0",
            "failed_job_count": "0",
            "total_working_time": "0",
            "heartbeats_while_busy": "1",
        }
        conn.hset(key, mapping=fields)
        if case.target not in ("name", "inflight"):
            if case.value is None:
                conn.hdel(key, case.target)
            else:
                conn.hset(key, case.target, case.value)
        conn.sadd("rq:workers", key)
        conn.sadd("rq:workers:default", key)
        # its job, taken off the queue and registered as started by it (an execution of its own)
        with conn.pipeline() as pipe:
            pipe.lrem(self.q.key, 0, job.id)
            Execution.create(job, ttl=60, pipeline=pipe, worker_name=name.decode(errors="replace"))
            pipe.hset(job.key, mapping={"status": "started", "worker_name": name})
            pipe.execute()
        inflight = b"worker:inflight:" + name
        if case.target == "inflight":  # an odd id in its in-flight list (taken, never started)
            conn.rpush(inflight, case.value)
        rnd.cleanups.append(lambda: conn.delete(key, inflight))
        rnd.cleanups.append(lambda: conn.srem("rq:workers", key))
        rnd.cleanups.append(lambda: conn.srem("rq:workers:default", key))

    # -- watching --------------------------------------------------------------------------
    def _status(self, job_id: str) -> str:
        raw = self.conn.hget(Job.key_for(job_id), "status")
        if raw is None:
            return "gone" if not self.conn.exists(Job.key_for(job_id)) else "no status"
        return raw.decode(errors="replace")

    def _ended(self, job_id: str, case: Case | None) -> bool:
        status = self._status(job_id)
        if status in END_STATES:
            return True
        if status == "scheduled":  # a retry or repeat due later: ended for this round if really scheduled
            return self.conn.zscore("rq:scheduled:default", job_id) is not None
        # RQ deletes a job whose TTL says so: not lost
        return (
            status == "gone" and case is not None and (case.target in MAY_VANISH or case.label.startswith("result_ttl"))
        )

    def _all_done(self, rnd: Round, probe_id: str) -> bool:
        return self._status(probe_id) == "finished" and all(self._ended(j, c) for j, c in rnd.jobs.items())

    def _exited(self, rnd: Round, last_body: dict | None = None) -> None:
        w = self.worker
        code = w.proc.returncode
        current = (last_body or {}).get("current_job") or {}
        job_id = current.get("id") or self._current_job_of(self.name)
        case = self.jobs.get(job_id) if job_id else None
        tail = " | ".join(w.log().strip().splitlines()[-3:])[-400:]
        rnd.add(case, f"worker exited with {code} (job {job_id or '?'}); log: {tail}")
        w.stop()

    def _current_job_of(self, name: str) -> str | None:
        with contextlib.suppress(RedisError):
            raw = self.conn.hget(f"rq:worker:{name}", "current_job")
            return raw.decode(errors="replace") if raw else None
        return None

    def _watch(self, rnd: Round, bound: float, done: Callable[[], bool]) -> None:
        """Until `done()` or `bound` seconds: the worker runs, answers /healthz 200, heartbeats."""
        deadline = time.monotonic() + bound
        last_answer = time.monotonic()
        body: dict | None = None
        while time.monotonic() < deadline:
            w = self.worker
            if w.proc.poll() is not None:
                self._exited(rnd, body)
                self._ensure_worker(rnd)
                last_answer, body = time.monotonic(), None
                continue
            try:
                status, got = w.get("/healthz")
                last_answer = time.monotonic()
                if isinstance(got, dict):
                    body = got
                    case = self.jobs.get(((got.get("current_job") or {}).get("id")) or "")
                    age = got.get("heartbeat_age_seconds", 0)
                    if status != 200:
                        rnd.add(case, f"/healthz {status}: {str(got.get('reason'))[:200]}")
                    elif age > HEARTBEAT_BOUND:
                        rnd.add(case, f"heartbeat_age_seconds {age} > {HEARTBEAT_BOUND}")
            except (OSError, ValueError):
                if time.monotonic() - last_answer > HEALTHZ_SILENCE and w.proc.poll() is None:
                    case = self.jobs.get(((body or {}).get("current_job") or {}).get("id") or "")
                    rnd.add(case, f"/healthz did not answer for {HEALTHZ_SILENCE:.0f} s")
            if done():
                return
            time.sleep(0.3)

    def _verdicts(self, rnd: Round, probe_id: str) -> None:
        probe = self._status(probe_id)
        if probe != "finished":
            rnd.add(None, f"the normal job after the hostile ones: {probe}, not finished")
        never_ran: list[Case] = []
        for job_id, case in rnd.jobs.items():
            if not self._ended(job_id, case):
                status = self._status(job_id)
                where = []
                if any(
                    m.decode(errors="replace").startswith(job_id) for m in self.conn.zrange("rq:wip:default", 0, -1)
                ):
                    where.append("in the started registry")
                if self.conn.lpos(self.q.key, job_id) is not None:
                    where.append("in its queue")
                    self.conn.lrem(self.q.key, 0, job_id)  # not to hold up the next round
                if status == "queued" and where == ["in its queue"]:
                    never_ran.append(case)  # behind a stall or an exit: told apart below
                    continue
                rnd.add(case, f"job {job_id} left {status!r}{' (' + ', '.join(where) + ')' if where else ''}")
        if never_ran and rnd.findings:
            ns = ",".join(str(c.n) for c in never_ran)
            rnd.add(None, f"{len(never_ran)} jobs never dequeued, behind the trouble above (cases {ns})")
        else:
            for case in never_ran:
                rnd.add(case, "job never dequeued: still in its queue")
        for key, entry, case in rnd.queue_entries:
            with contextlib.suppress(RedisError):
                if self.conn.lpos(key, entry) is not None:
                    rnd.add(case, "entry left in the queue")
        if self.worker.proc.poll() is not None:
            self._exited(rnd)

    # -- phases of some rounds ------------------------------------------------------------
    def _restart(self, rnd: Round) -> None:
        """Warm stop (exit 0 expected), then a fresh worker (its start-up maintenance reads
        the entries), watched again with a normal job."""
        w = self.worker
        if w.proc.poll() is None:
            w.signal(signal.SIGTERM)
            try:
                code = w.wait(20)
                if code != 0:
                    rnd.add(None, f"warm stop: exit {code}; log: {w.log()[-300:]}")
            except subprocess.TimeoutExpired:
                rnd.add(None, "warm stop: still running 20 s after SIGTERM")
            w.stop()
        self._ensure_worker(rnd)
        probe = self.q.enqueue(PING, "probe after restart")
        started = time.monotonic()
        self._watch(rnd, JOB_BOUND, lambda: self._all_done(rnd, probe.id) and time.monotonic() - started >= SETTLE)
        if self._status(probe.id) != "finished":
            rnd.add(None, f"after a restart, a normal job: {self._status(probe.id)}, not finished")

    def _command_still_works(self, rnd: Round) -> None:
        """Publish the garbage, then check a real stop-job command is still carried out."""
        channel = PUBSUB_CHANNEL_TEMPLATE % self.name
        for case in rnd.cases:
            if case.kind == "command":
                self.conn.publish(channel, case.value)
        time.sleep(0.5)
        job = self.q.enqueue(SLEEP, 30, result_ttl=600)
        if not self._wait(lambda: self._status(job.id) == "started", 20, rnd):
            rnd.add(None, f"after the garbage messages, a sleep job: {self._status(job.id)}, not started")
            return
        send_stop_job_command(self.conn, job.id, serializer=JSONSerializer)
        if not self._wait(lambda: self._status(job.id) == "stopped", 15, rnd):
            rnd.add(None, f"stop-job command ignored after the garbage messages (the job ended {self._status(job.id)})")
        if self.worker.proc.poll() is not None:
            self._exited(rnd)

    def _mid_run(self, rnd: Round, case: Case) -> None:
        """The job's field overwritten while it runs, then its horse SIGKILLed: the worker goes on."""
        job_id = next(j for j, c in rnd.jobs.items() if c is case)
        if not self._wait(lambda: self._status(job_id) == "started", 20, rnd):
            rnd.add(case, f"mid-run: job never started ({self._status(job_id)})")
            return
        if case.value is None:
            self.conn.hdel(Job.key_for(job_id), case.target)
        else:
            self.conn.hset(Job.key_for(job_id), case.target, case.value)
        for horse in _children(self.worker.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(horse, signal.SIGKILL)

    def _warm_stop(self, rnd: Round, case: Case) -> None:
        """SIGTERM while the job with hostile meta runs past SHUTDOWN_TIMEOUT: exit 0, the job
        put back; then a fresh worker runs it."""
        job_id = next(j for j, c in rnd.jobs.items() if c is case)
        if not self._wait(lambda: self._status(job_id) == "started", 20, rnd):
            rnd.add(case, f"warm stop: job never started ({self._status(job_id)})")
            return
        w = self.worker
        w.signal(signal.SIGTERM)
        try:
            code = w.wait(20)
            if code != 0:
                rnd.add(case, f"warm stop past SHUTDOWN_TIMEOUT: exit {code}; log: {w.log()[-300:]}")
        except subprocess.TimeoutExpired:
            rnd.add(case, "warm stop: still running 20 s after SIGTERM")
        w.stop()
        status = self._status(job_id)
        if status not in ("queued", *END_STATES):
            rnd.add(case, f"warm stop: job left {status!r}, not put back")
        self._ensure_worker(rnd)


def _children(pid: int) -> list[int]:
    """Direct children of a process (a worker's horse), from /proc."""
    out = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
    return out


def _peak_rss_mb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def group_rounds(cases: list[Case]) -> list[list[Case]]:
    """One round per (kind, target), one per warm stop, all commands together."""
    groups: dict[tuple[str, str, str], list[Case]] = {}
    for c in cases:
        key = (c.kind, "" if c.kind == "command" else c.target, c.func if c.kind == "field" else "")
        if c.kind in ("warmstop", "midrun"):
            key = (c.kind, str(c.n), "")
        groups.setdefault(key, []).append(c)
    return list(groups.values())


def sample_rounds(cases: list[Case]) -> list[list[Case]]:
    """The sample in few rounds: all jobs at once, all entries at once, commands, the warm stop."""
    by = {"jobs": [], "entries": [], "command": [], "midrun": [], "warmstop": []}
    for c in cases:
        by[
            "jobs"
            if c.kind in ("field", "data", "client")
            else "entries"
            if c.kind in ("queue", "registry", "worker")
            else c.kind
        ].append(c)
    return [g for g in by.values() if g]


def table(findings: list[Finding]) -> str:
    """A Markdown table: case, what went wrong."""
    rows = ["| case | kind:target = value | problem |", "|---|---|---|"]
    for f in findings:
        c = f.case
        what = f"{c.kind}:{c.target} = {c.label}" + (f" (known {c.known})" if c and c.known else "") if c else "(round)"
        rows.append(f"| {c.n if c else '-'} | {what.replace('|', '/')} | {f.problem.replace('|', '/')[:300]} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile
    from pathlib import Path

    from tests.conftest import WorkerProcess
    from worker.devredis import RedisServer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--case", type=int, action="append", help="run this case alone (repeatable)")
    p.add_argument("--full", action="store_true", help="the full matrix")
    p.add_argument("--sample", action="store_true", help="the sample make test runs")
    p.add_argument("--kind", help="only cases of this kind")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    p.add_argument("--no-isolate", action="store_true")
    args = p.parse_args(argv)
    cases = sample(args.seed) if args.sample else matrix(args.seed)
    if args.case:
        cases = [c for c in matrix(args.seed) if c.n in args.case]
    if args.kind:
        cases = [c for c in cases if c.kind == args.kind]
    if args.list or not (args.full or args.sample or args.case):
        for c in cases:
            print(c)
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = RedisServer(directory=tmp / "redis").start()
        started: list[WorkerProcess] = []

        def start(extra_env=None, ready=True):
            w = WorkerProcess(server.url, tmp, extra_env)
            started.append(w)
            if ready:
                w.wait_ready()
            return w

        try:
            conn = Redis.from_url(server.url)
            rounds = sample_rounds(cases) if args.sample else None
            findings = Fuzzer(conn, start).run(cases, rounds, isolate=not args.no_isolate)
        finally:
            for w in started:
                w.stop()
            server.stop()
    print(f"\nseed {args.seed}: {len(cases)} cases, {len(findings)} findings")
    if findings:
        print(table(findings))
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
