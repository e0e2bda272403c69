"""All configuration, read once from the environment; command-line flags override.

This module is a leaf: it imports nothing from the rest of the package, and every other
module reads its settings from here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting has a value we cannot use."""


# Parsers: (raw value, variable name) -> value, SettingsError naming the variable otherwise.
# The raw value is stripped and never empty (unset or empty means the default).
Parser = Callable[[str, str], Any]


def text(raw: str, name: str) -> str:
    return raw


def integer(minimum: int = 0) -> Parser:
    def parse(raw: str, name: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def port(raw: str, name: str) -> int:
    """A port, or `BASE+N` (what a systemd template writes as `8000+%i`: instance 10 gets 8010)."""
    base, plus, offset = raw.partition("+")
    try:
        value = int(base) + (int(offset) if plus else 0)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, or BASE+N, got {raw!r}") from None
    if not 0 <= value <= 65535:
        raise SettingsError(f"{name} must be 0..65535, got {value}")
    return value


def number(minimum: float = 0.0) -> Parser:
    def parse(raw: str, name: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not value >= minimum:  # NaN too
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def choice(*choices: str) -> Parser:
    def parse(raw: str, name: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def comma_list(lower: bool = False) -> Parser:
    def parse(raw: str, name: str) -> tuple[str, ...]:
        return tuple((v.strip().lower() if lower else v.strip()) for v in raw.split(",") if v.strip())

    return parse


def int_list(raw: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise SettingsError(f"{name} must be comma-separated integers, got {raw!r}") from None
    if any(v < 0 for v in values):
        raise SettingsError(f"{name} values must be >= 0")
    return values


def path(raw: str, name: str) -> Path:
    return Path(raw).expanduser()


def path_list(raw: str, name: str) -> tuple[Path, ...] | None:
    """Colon-separated paths; None (the default) when there is none."""
    return tuple(Path(p).expanduser() for p in raw.split(":") if p.strip()) or None


def log_level(raw: str, name: str) -> str:
    value = raw.upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(f"{name} must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return value


def sentinels(raw: str, name: str) -> tuple[tuple[str, int], ...]:
    return parse_sentinels(raw)


def setting(env: str, parse: Parser, *, shown: str, help: str, flag: str | None = None, **default: Any) -> Any:
    """One setting, declared once: its variable, parser, default (`default=` or
    `default_factory=`), the default as the docs show it, its help (the docs' meaning column)
    and its flag of `python -m worker run`, if any."""
    meta = {"env": env, "parse": parse, "shown": shown, "help": help, "flag": flag}
    return field(metadata=meta, **default)


# -- secrets out of text: the one redactor of the package -------------------------------------
# A query parameter is secret when its name holds one of these (?password=, &auth_token=...).
_SECRET_WORDS = "pass|pwd|secret|token|auth|credential"
# A URL's credentials in free text: the password runs to the LAST "@" before a blank, as it may
# hold "@", "/" or "#" unencoded. The user is kept, for the reader.
_CREDENTIALS_IN_TEXT = re.compile(r"(\b[a-z][a-z0-9+.-]*://)([^/@\s:]*):(\S+)@", re.IGNORECASE)


def _secret_values(stop: str) -> re.Pattern[str]:
    """A secret query value, up to any of the characters `stop` (a character class's inside)."""
    return re.compile(rf"([?&][^={stop}]*(?:{_SECRET_WORDS})[^={stop}]*=)[^{stop}]*", re.IGNORECASE)


_SECRET_VALUE_IN_TEXT = _secret_values(r"&\s#")  # in free text a blank or "#" ends the value too
_SECRET_VALUE_IN_URL = _secret_values("&")  # in a whole URL only the next parameter does


def redact(text: str) -> str:
    """Hide passwords in the URLs of free text (redis://user:secret@host -> redis://user:***@host,
    ?password=*** anywhere), for log lines and error messages."""
    return _SECRET_VALUE_IN_TEXT.sub(r"\1***", _CREDENTIALS_IN_TEXT.sub(r"\1\2:***@", text))


def redact_url(url: str) -> str:
    """Return `url` without its user and password, nor secret query values, safe for logs and bodies.

    Everything between "://" and the LAST "@" is credentials: a password with an unencoded
    "@", "/" or "#" must not leave its tail behind.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable url>"
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return _SECRET_VALUE_IN_URL.sub(r"\1***", f"{scheme}://{rest}")


def check_redis_url(url: str) -> None:
    """SettingsError, naming no part of the URL, when redis-py could not use `url`."""
    hint = (
        "REDIS_URL is not a valid URL: {why}; percent-encode special characters in the password"
        " (/ as %2F, @ as %40, : as %3A, # as %23, ? as %3F)"
    )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise SettingsError(hint.format(why="its host or port cannot be read")) from None
    if parts.scheme in ("redis", "rediss"):
        if "@" in parts.path + parts.query + parts.fragment or parts.fragment:
            raise SettingsError(hint.format(why="an '@' or '#' outside the credentials")) from None
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise SettingsError(hint.format(why="the database after the host must be a number")) from None


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def default_redis_url(cwd: Path | None = None) -> str:
    """REDIS_URL's default: the private Redis that `make run-worker` started for this checkout
    while it runs (its URL in var/redis.url, written by worker.devredis), else 6379 on loopback.
    So a second terminal in the same directory reaches the worker's Redis."""
    try:
        url = ((cwd or Path.cwd()) / "var" / "redis.url").read_text().strip()
    except OSError:
        return DEFAULT_REDIS_URL
    return url if url.startswith("redis://127.0.0.1:") else DEFAULT_REDIS_URL


SENTINEL_PORT = 26379  # Redis Sentinel's default port


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """REDIS_SENTINELS: comma-separated `host:port` (`[v6addr]:port` for IPv6; no port: 26379)."""
    found: list[tuple[str, int]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
            ok = bracket == "]" and (rest == "" or (rest.startswith(":") and port != ""))
        else:
            host, colon, port = item.partition(":")
            ok = not (colon and port == "")
        if not (ok and host and (port == "" or (port.isdigit() and 0 < int(port) < 65536))):
            raise SettingsError(f"REDIS_SENTINELS wants comma-separated host:port, got {item!r}")
        found.append((host, int(port) if port else SENTINEL_PORT))
    return tuple(found)


MODEL_WINDOW = 256  # word pieces the embedding model reads at most (all-MiniLM-L6-v2), special tokens included
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search

STORE_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}


def store_kind(store_url: str) -> str:
    """The store's kind, "sqlite" or "postgresql", from the URL's scheme; SettingsError (naming no secret) otherwise."""
    scheme = store_url.partition("://")[0].lower() if "://" in store_url else ""
    if scheme not in STORE_SCHEMES:
        raise SettingsError(
            "STORE_URL must be sqlite:///path.db, postgresql://... or postgres://..., got "
            + (redact_url(store_url) if scheme else "no URL scheme")
        )
    return STORE_SCHEMES[scheme]


def check_store_url(store_url: str) -> None:
    """SettingsError when STORE_URL cannot name a store (its password is never in the message)."""
    if store_kind(store_url) == "sqlite":
        sqlite_path(store_url)
        return
    try:
        parts = urlsplit(store_url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise SettingsError(
            "STORE_URL's host or port cannot be read; percent-encode special characters in the password"
            " (/ as %2F, @ as %40, : as %3A, # as %23, ? as %3F)"
        ) from None


def sqlite_path(store_url: str, cwd: Path | None = None) -> Path:
    """Path of the SQLite file named by a SQLAlchemy-style URL.

    `sqlite:///relative.db` is relative to the working directory,
    `sqlite:////absolute/path.db` is absolute.
    """
    prefix = "sqlite:///"
    if not store_url.startswith(prefix):
        raise SettingsError(f"a SQLite STORE_URL must start with {prefix!r}, got {redact_url(store_url)}")
    rest = store_url[len(prefix) :]
    if not rest:
        raise SettingsError("STORE_URL names no file")
    path = Path(rest)
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    return path


def memory_limit_bytes(root: Path = Path("/")) -> int | None:
    """Memory this process may use: its cgroup's limit when one is set, else the host's MemTotal.

    `root` is the file system root to read /sys and /proc under (tests point it elsewhere).
    """
    candidates: list[Path] = []
    try:  # cgroup v2: "0::/path"; inside a container's cgroup namespace the path is "/"
        for line in (root / "proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                candidates.append(root / "sys/fs/cgroup" / line[3:].strip().lstrip("/") / "memory.max")
    except OSError:
        pass
    candidates += [root / "sys/fs/cgroup/memory.max", root / "sys/fs/cgroup/memory/memory.limit_in_bytes"]
    host: int | None = None
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                host = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    for path in candidates:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) > 0:  # "max" (v2) means no limit; v1 says so with a huge number
            return min(int(raw), host) if host else int(raw)
    return host


# HORSE_MEMORY_MB's default: half the memory, within these bounds. It limits address space, which
# is more than the memory used (what a horse maps: docs/benchmarks.md, "Worker overhead").
HORSE_MEMORY_MIN_MB = 2048
HORSE_MEMORY_MAX_MB = 64 * 1024


def default_horse_memory_mb(root: Path = Path("/")) -> int:
    """Half of this process's memory (cgroup limit or MemTotal), at least 2 GiB, at most 64 GiB."""
    total = memory_limit_bytes(root)
    if not total:
        return HORSE_MEMORY_MIN_MB
    return max(HORSE_MEMORY_MIN_MB, min(HORSE_MEMORY_MAX_MB, total // 2 // (1024 * 1024)))


@dataclass(frozen=True)
class RedisSettings:
    """Redis and queues"""

    redis_url: str = setting(
        "REDIS_URL",
        text,
        default_factory=default_redis_url,
        shown="`redis://127.0.0.1:6379/0`, or the private Redis `make run-worker` started (`var/redis.url`)",
        flag="--redis-url",
        help=(
            "Redis to take jobs from: a `redis://`, `rediss://` or `unix://` URL. Its password never "
            "appears in logs or health bodies."
        ),
    )
    redis_sentinels: tuple[tuple[str, int], ...] = setting(
        "REDIS_SENTINELS",
        sentinels,
        default=(),
        shown="unset",
        help=(
            "comma-separated `host:port` of Redis Sentinels (`[v6addr]:port` for IPv6; no port: "
            "26379); with `REDIS_SENTINEL_MASTER`, they give the primary's address "
            "([behaviour.md](behaviour.md#redis-failover)). `REDIS_URL` must then be `redis://` or "
            "`rediss://`: it still gives the database, user, password and TLS (the sentinels get its "
            "TLS options, not its password); its host and port are not used."
        ),
    )
    redis_sentinel_master: str = setting(
        "REDIS_SENTINEL_MASTER",
        text,
        default="",
        shown="unset",
        help=("the name the sentinels know the primary by (`sentinel monitor NAME ...`); set both or neither"),
    )
    queues: tuple[str, ...] = setting(
        "WORKER_QUEUES",
        comma_list(),
        default=("high", "default", "low"),
        shown="`high,default,low`",
        flag="--queues",
        help="comma-separated queues, highest priority first; strict priority",
    )
    dequeue_strategy: str = setting(
        "DEQUEUE_STRATEGY",
        choice("default", "round_robin", "random"),
        default="default",
        shown="`default`",
        help="RQ's: `default` (strict priority), `round_robin`, `random`",
    )
    worker_name: str | None = setting(
        "WORKER_NAME",
        text,
        default=None,
        shown="`<hostname>.<pid>.<random>` (6 hex digits)",
        flag="--name",
        help=(
            "name shown in `rq info`; must be unique among live workers. The random tag keeps a "
            "restarted worker with the same hostname and pid (PID 1 in a container) from colliding "
            "with its crashed predecessor still registered in Redis, so leave it unset under systemd "
            "and in containers."
        ),
    )


@dataclass(frozen=True)
class HealthSettings:
    """Health and logs"""

    health_host: str = setting(
        "HEALTH_HOST",
        text,
        default="127.0.0.1",
        shown="`127.0.0.1`",
        flag="--health-host",
        help="health server address (`0.0.0.0` in a container)",
    )
    health_port: int = setting(
        "HEALTH_PORT",
        port,
        default=8001,
        shown="`8001`",
        flag="--health-port",
        help="health server port, 0 to 65535 (`0`: any free port), or `BASE+N` (`8000+%i` in a systemd template unit)",
    )
    log_level: str = setting(
        "LOG_LEVEL",
        log_level,
        default="INFO",
        shown="`INFO`",
        flag="--log-level",
        help="`DEBUG`, `INFO`, `WARNING`, `ERROR` (`CRITICAL` is accepted too)",
    )
    log_format: str = setting(
        "LOG_FORMAT",
        choice("text", "json"),
        default="text",
        shown="`text`",
        flag="--log-format",
        help=("`text` for humans, `json` for one JSON object per line ([fields](deployment.md#observability))"),
    )
    liveness_timeout: float = setting(
        "LIVENESS_TIMEOUT",
        number(1.0),
        default=30.0,
        shown="`30`",
        help="seconds, at least 1: `/healthz` fails when the main loop has not ticked for this long",
    )
    job_grace: float = setting(
        "JOB_GRACE",
        number(0.0),
        default=60.0,
        shown="`60`",
        help=("seconds: `/healthz` fails when a job runs past its timeout by this much, and the horse is killed"),
    )
    poll_interval: int = setting(
        "POLL_INTERVAL",
        integer(1),
        default=1,
        shown="`1`",
        help="whole seconds, at least 1: the longest the idle worker blocks on Redis between ticks",
    )


@dataclass(frozen=True)
class JobSettings:
    """Jobs: what runs, for how long, with how much memory"""

    job_timeout: int = setting(
        "JOB_TIMEOUT",
        integer(1),
        default=600,
        shown="`600`",
        flag="--job-timeout",
        help=(
            "seconds a job may run, at least 1 (used by `enqueue`, and for a job that carries no "
            "timeout; a job enqueued elsewhere carries its own)"
        ),
    )
    max_job_timeout: int = setting(
        "MAX_JOB_TIMEOUT",
        integer(1),
        default=3600,
        shown="`3600`",
        help=(
            "the longest any job runs, whatever timeout its hash carries: a timeout of 0 or less, or "
            "over this, becomes this (a client cannot switch the limit off)"
        ),
    )
    shutdown_timeout: int = setting(
        "SHUTDOWN_TIMEOUT",
        integer(0),
        default=25,
        shown="`25`",
        flag="--shutdown-timeout",
        help=(
            "seconds a warm shutdown waits for the running job before putting it back (below "
            "Kubernetes' 30 s grace period)"
        ),
    )
    serializer: str = setting(
        "WORKER_SERIALIZER",
        choice("json", "pickle"),
        default="json",
        shown="`json`",
        flag="--serializer",
        help=(
            "`json`, or `pickle` as an explicit choice (a pickle payload is code execution for anyone "
            "who can write to Redis); also what `rq worker -w worker.daemon.DaemonWorker` uses unless "
            "given `--serializer` other than RQ's default"
        ),
    )
    extra_jobs: tuple[str, ...] = setting(
        "EXTRA_JOBS",
        comma_list(),
        default=(),
        shown="empty",
        help=(
            "comma-separated dotted names of your own job functions to register beside the built-in ones; "
            "each is imported at start, and one that names nothing callable stops `run` with exit code 2"
        ),
    )
    max_job_data_bytes: int = setting(
        "MAX_JOB_DATA_BYTES",
        integer(1024),
        default=64 * 1024 * 1024,
        shown="`67108864` (64 MiB)",
        help=(
            "largest job hash the worker reads from Redis (all fields, measured in Redis before "
            "reading), and the most its zlib-packed `data` and `exc_info` may unpack to; at least "
            "1024, and at least twice the smaller of `MAX_INLINE_BYTES` and `MAX_PDF_BYTES` (inline "
            "data travels base64-encoded in `data`). Over it the job fails with `UnreadableJobError` "
            "naming this setting"
        ),
    )
    webhook_hosts: tuple[str, ...] = setting(
        "WEBHOOK_HOSTS",
        comma_list(lower=True),
        default=(),
        shown="empty (webhooks off)",
        help=(
            "comma-separated host names that RQ job webhooks may be sent to; a webhook to any other "
            "host is not sent, and a redirect to one is not followed (both logged)"
        ),
    )
    webhook_timeout: int = setting(
        "WEBHOOK_TIMEOUT",
        integer(1),
        default=5,
        shown="`5`",
        help="seconds at most for one webhook request, whatever the job asked for",
    )
    retry_intervals: tuple[int, ...] = setting(
        "RETRY_INTERVALS",
        int_list,
        default=(5, 30, 120),
        shown="`5,30,120`",
        help=(
            "seconds between automatic retries of transient failures (store locked, Redis lost); "
            "their count is the number of retries. Unset or empty means the default; a value with no "
            "number in it, such as `,`, disables automatic retries."
        ),
    )
    dead_worker_after: float = setting(
        "DEAD_WORKER_AFTER",
        number(2.0),
        default=45.0,
        shown="`45`",
        help=(
            "seconds, at least 2: a worker silent this long is dead and its jobs are put back on "
            "their queues ([recovery](behaviour.md#a-worker-that-dies))"
        ),
    )
    max_attempts: int = setting(
        "MAX_ATTEMPTS",
        integer(1),
        default=3,
        shown="`3`",
        help=("a job whose worker died this many times is failed with `WorkerDiedError` (a poison input)"),
    )
    horse_memory_mb: int = setting(
        "HORSE_MEMORY_MB",
        integer(0),
        default_factory=default_horse_memory_mb,
        shown="half the memory of the cgroup (`memory.max`) or host, 2048 to 65536",
        help=(
            "address-space limit of a work-horse, MiB (`0`, set explicitly: none); a runaway job "
            "fails cleanly (`MemoryError`) instead of the host running out of memory"
        ),
    )
    daemon_memory_mb: int = setting(
        "DAEMON_MEMORY_MB",
        integer(0),
        default=1024,
        shown="`1024`",
        help=(
            "resident-memory ceiling of the long-lived parent process (not its horses), MiB; past it "
            "the worker stops warm (the running job finishes) and exits 4, for its supervisor to "
            "start a fresh one (what it holds idle: [benchmarks.md](benchmarks.md#memory)). `0`: none"
        ),
    )


@dataclass(frozen=True)
class InputSettings:
    """Inputs, chunks and the store"""

    store_url: str = setting(
        "STORE_URL",
        text,
        default="sqlite:///var/worker.db",
        shown="`sqlite:///var/worker.db` (`var/worker.db` under the working directory)",
        flag="--store-url",
        help=(
            "The store. SQLite file, SQLAlchemy style: `sqlite:///relative.db` (relative to the "
            "working directory) or `sqlite:////absolute/path.db` (one host). Or PostgreSQL with "
            "pgvector, shared by many hosts: `postgresql://user:password@host:5432/db` (also "
            "`postgres://`); query options such as `sslmode=require` or `connect_timeout=10` go to "
            "libpq as they are; percent-encode special characters in the password. Needs the extra "
            "`pip install -e '.[postgres]'` (the container image has it). The password never "
            "appears in logs, health bodies, `status` or job errors. Another scheme is a "
            "configuration error. See [ingestion.md](ingestion.md#postgresql)."
        ),
    )
    input_roots: tuple[Path, ...] = setting(
        "INPUT_ROOTS",
        path_list,
        default_factory=lambda: (Path.cwd(),),
        shown="the working directory",
        help="colon-separated directories that path inputs must lie in (symlinks resolved)",
    )
    max_pdf_bytes: int = setting(
        "MAX_PDF_BYTES",
        integer(1),
        default=100 * 1024 * 1024,
        shown="`104857600` (100 MiB)",
        help="largest PDF accepted, bytes",
    )
    max_inline_bytes: int = setting(
        "MAX_INLINE_BYTES",
        integer(1),
        default=10 * 1024 * 1024,
        shown="`10485760` (10 MiB)",
        help=(
            "largest inline (`data_b64`) PDF accepted, bytes once decoded, checked before decoding; "
            "the smaller of this and `MAX_PDF_BYTES` applies"
        ),
    )
    max_pages: int = setting(
        "MAX_PAGES",
        integer(1),
        default=2000,
        shown="`2000`",
        help="most pages accepted in one PDF",
    )
    max_page_chars: int = setting(
        "MAX_PAGE_CHARS",
        integer(1),
        default=100_000,
        shown="`100000`",
        help=(
            "most characters of text one page may yield; past it the job fails with "
            "`TextTooLargeError`, checked as each page is read"
        ),
    )
    max_document_chars: int = setting(
        "MAX_DOCUMENT_CHARS",
        integer(1),
        default=10_000_000,
        shown="`10000000`",
        help="most characters of text one document may yield (`TextTooLargeError`)",
    )
    extract_memory_mb: int = setting(
        "EXTRACT_MEMORY_MB",
        integer(0),
        default=512,
        shown="`512`",
        help=(
            "MiB of address space PDFium may add while reading one PDF (in a child of the work-horse); "
            "a page that needs more fails the job (`TextTooLargeError` while building its text); 0: no cap"
        ),
    )
    chunk_tokens: int = setting(
        "CHUNK_TOKENS",
        integer(16),
        default=256,
        shown="`256`",
        help="word pieces per chunk at most, 16 to 256 (the model's window)",
    )
    chunk_overlap: int = setting(
        "CHUNK_OVERLAP",
        integer(0),
        default=32,
        shown="`32`",
        help="word pieces shared by consecutive chunks; less than half of `CHUNK_TOKENS`",
    )
    store_busy_timeout: float = setting(
        "STORE_BUSY_TIMEOUT",
        number(0.0),
        default=30.0,
        shown="`30`",
        help=(
            "seconds a store write waits for another writer's lock (SQLite busy timeout; PostgreSQL "
            "`lock_timeout`); past it the job fails with `StoreBusyError` (SQLite) or "
            "`StoreUnavailableError` (PostgreSQL) and is retried"
        ),
    )
    hnsw_ef_search: int = setting(
        "HNSW_EF_SEARCH",
        integer(1),
        default=200,
        shown="`200`",
        help=(
            "PostgreSQL `search`: HNSW candidate list (`hnsw.ef_search`, 1..1000, at least `-k`); "
            "higher finds the exact neighbours more often and costs more time. SQLite search is exact "
            "and ignores it"
        ),
    )


@dataclass(frozen=True)
class EmbeddingSettings:
    """Embeddings"""

    embed_model_dir: Path = setting(
        "EMBED_MODEL_DIR",
        path,
        default_factory=lambda: Path.cwd() / "var" / "model",
        shown="`var/model` under the working directory",
        flag="--model-dir",
        help=(
            "directory with `model.onnx`, `model-int8.onnx`, `tokenizer.json`, `manifest.json` (built by `make model`)"
        ),
    )
    embed_precision: str = setting(
        "EMBED_PRECISION",
        choice("auto", "fp32", "int8"),
        default="auto",
        shown="`auto`",
        flag="--precision",
        help=(
            "`auto`, `fp32` or `int8`; `auto` runs int8 where the CPU computes it exactly and faster "
            "(x86-64 with VNNI: 8-bit weights; x86-64 with AVX2 but no VNNI: 7-bit weights; arm64 with "
            "`asimddp`), fp32 elsewhere; `int8` on another CPU runs fp32 with a warning at start "
            "([precision](embeddings.md#precision))"
        ),
    )
    embed_threads: int = setting(
        "EMBED_THREADS",
        integer(0),
        default=0,
        shown="`0`",
        help="threads embedding at once per process (a batch each); `0`: the cores divided by `WORKERS_PER_HOST`",
    )
    workers_per_host: int = setting(
        "WORKERS_PER_HOST",
        integer(1),
        default=1,
        shown="`1`",
        help="worker processes on this host, at least 1 (divides the cores among them)",
    )
    embed_batch_tokens: int = setting(
        "EMBED_BATCH_TOKENS",
        integer(256),
        default=2048,
        shown="`2048`",
        help="padded tokens embedded at once (texts × longest text), shared among the threads' batches; at least 256",
    )
    max_embed_texts: int = setting(
        "MAX_EMBED_TEXTS",
        integer(1),
        default=4096,
        shown="`4096`",
        help="most texts one `embed_texts` job may carry",
    )
    bulk_shard_records: int = setting(
        "BULK_SHARD_RECORDS",
        integer(1),
        default=2000,
        shown="`2000`",
        help=(
            "records of a bulk input file per shard job of `embed_bulk` (each shard is one RQ job any "
            "worker takes); see [bulk.md](bulk.md)"
        ),
    )
    max_bulk_records: int = setting(
        "MAX_BULK_RECORDS",
        integer(1),
        default=10_000_000,
        shown="`10000000`",
        help="most records one `embed_bulk` input file may hold",
    )


# The settings in groups, each declared once; `Settings` is all of them. (Dataclass fields come
# base-most first: the bases are listed last group first, so the fields keep the groups' order.)
GROUPS = (
    RedisSettings,
    HealthSettings,
    JobSettings,
    InputSettings,
    EmbeddingSettings,
)


@dataclass(frozen=True)
class Settings(EmbeddingSettings, InputSettings, JobSettings, HealthSettings, RedisSettings):
    """Every setting. The docs' table (docs/configuration.md) is generated from the declarations
    of the groups above (`python tools/settings_table.py --write`); a test checks that it is."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables (unset or empty: the default), validated."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"], "").strip()
            if raw:
                value = f.metadata["parse"](raw, f.metadata["env"])
                if value is not None:
                    values[f.name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.queues:
            raise SettingsError("WORKER_QUEUES names no queue")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"REDIS_URL must be a redis://, rediss:// or unix:// URL, got {redact_url(self.redis_url)}"
            )
        check_redis_url(self.redis_url)
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise SettingsError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: set both or neither")
        if self.redis_sentinels and not self.redis_url.startswith(("redis://", "rediss://")):
            raise SettingsError("with REDIS_SENTINELS, REDIS_URL must be a redis:// or rediss:// URL (not unix://)")
        if not 0 <= self.health_port <= 65535:
            raise SettingsError(f"HEALTH_PORT must be 0..65535, got {self.health_port}")
        if self.chunk_tokens > MODEL_WINDOW:
            raise SettingsError(f"CHUNK_TOKENS cannot exceed the model's window of {MODEL_WINDOW}")
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise SettingsError("CHUNK_OVERLAP must be less than half of CHUNK_TOKENS")
        check_store_url(self.store_url)
        if not 1 <= self.hnsw_ef_search <= MAX_EF_SEARCH:
            raise SettingsError(
                f"HNSW_EF_SEARCH must be 1..{MAX_EF_SEARCH} (pgvector's range), got {self.hnsw_ef_search}"
            )
        inline = min(self.max_inline_bytes, self.max_pdf_bytes)
        if self.max_job_data_bytes < 2 * inline:
            raise SettingsError(
                f"MAX_JOB_DATA_BYTES ({self.max_job_data_bytes}) must be at least twice MAX_INLINE_BYTES ({inline}):"
                " inline data travels base64-encoded in the job's data"
            )
        if self.job_timeout > self.max_job_timeout:
            raise SettingsError(f"JOB_TIMEOUT ({self.job_timeout}) exceeds MAX_JOB_TIMEOUT ({self.max_job_timeout})")

    def override(self, **changes: object) -> Settings:
        """A copy with the given fields changed (None values are ignored: flag not given)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        changed = replace(self, **{k: v for k, v in changes.items() if v is not None})
        changed.validate()
        return changed

    def capped_timeout(self, timeout: object) -> int:
        """The timeout a job runs under: its own when it is a number in (0, MAX_JOB_TIMEOUT],
        else MAX_JOB_TIMEOUT (a client cannot switch the limit off with -1 or 10**9); none: JOB_TIMEOUT."""
        if timeout is None:
            return self.job_timeout
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 < timeout <= self.max_job_timeout:
            return max(1, int(timeout))
        return self.max_job_timeout

    @property
    def heartbeat_interval(self) -> float:
        """How often the worker heartbeats in Redis (and sweeps for dead workers' jobs)."""
        return max(0.5, min(10.0, self.dead_worker_after / 4))

    @property
    def store_kind(self) -> str:
        return store_kind(self.store_url)

    @property
    def store_path(self) -> Path:
        """The SQLite file (SettingsError for a PostgreSQL STORE_URL)."""
        return sqlite_path(self.store_url)

    @property
    def safe_store_url(self) -> str:
        return redact_url(self.store_url)

    @property
    def safe_redis_url(self) -> str:
        """REDIS_URL without secrets; with Sentinel, also which primary and which sentinels."""
        if not self.redis_sentinels:
            return redact_url(self.redis_url)
        sentinels = ",".join(f"{h}:{p}" for h, p in self.redis_sentinels)
        return f"{redact_url(self.redis_url)} (primary {self.redis_sentinel_master!r} from sentinels {sentinels})"

    def threads_per_process(self) -> int:
        """Batches embedded at once (each on one core): EMBED_THREADS, or the cores shared among the host's workers."""
        if self.embed_threads > 0:
            return self.embed_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.workers_per_host)


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def set_settings(settings: Settings) -> None:
    """Install settings built elsewhere (the CLI, after applying flags)."""
    global _settings
    _settings = settings


def flagged() -> list[tuple[str, str, str]]:
    """(flag, field name, variable) of every setting that `python -m worker run` takes as a flag."""
    return [(f.metadata["flag"], f.name, f.metadata["env"]) for f in fields(Settings) if f.metadata["flag"]]


def markdown_table() -> str:
    """The settings tables of docs/configuration.md, one per group, from the declarations above."""
    lines: list[str] = []
    for group in GROUPS:
        lines += ["", f"### {group.__doc__}", "", "| variable | default | meaning | flag |", "|---|---|---|---|"]
        lines += [_row(f.metadata) for f in fields(group)]
    return "\n".join(lines[1:]) + "\n"


def _row(m: Mapping[str, Any]) -> str:
    flag = f"`{m['flag']}` " if m["flag"] else ""
    return f"| `{m['env']}` | {m['shown']} | {m['help']} | {flag}|"
