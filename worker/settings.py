"""All configuration, read once from the environment; command-line flags override.

This module is a leaf: it imports nothing from the rest of the package, and every other
module reads its settings from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting has a value we cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int_list(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(int(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise SettingsError(f"{name} must be comma-separated integers, got {raw!r}") from None
    if any(v < 0 for v in values):
        raise SettingsError(f"{name} values must be >= 0")
    return values


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


_SECRET_QUERY_KEYS = ("pass", "pwd", "secret", "token", "auth", "credential")


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
    path, q, query = rest.partition("?")
    if q:
        pairs = []
        for pair in query.split("&"):
            key, eq, _value = pair.partition("=")
            secret = eq and any(word in key.lower() for word in _SECRET_QUERY_KEYS)
            pairs.append(f"{key}=***" if secret else pair)
        path += "?" + "&".join(pairs)
    return f"{scheme}://{path}"


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
# is more than the memory used: a horse of this package maps about 1.1 GB doing ordinary work.
HORSE_MEMORY_MIN_MB = 2048
HORSE_MEMORY_MAX_MB = 64 * 1024


def default_horse_memory_mb(root: Path = Path("/")) -> int:
    """Half of this process's memory (cgroup limit or MemTotal), at least 2 GiB, at most 64 GiB."""
    total = memory_limit_bytes(root)
    if not total:
        return HORSE_MEMORY_MIN_MB
    return max(HORSE_MEMORY_MIN_MB, min(HORSE_MEMORY_MAX_MB, total // 2 // (1024 * 1024)))


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Sentinel: the sentinels and the name of the primary they watch. When set, they give
    # the primary's address; REDIS_URL still gives the database, user, password and TLS.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = ""
    queues: tuple[str, ...] = ("high", "default", "low")
    # RQ's dequeue strategies: default (strict priority), round_robin, random.
    dequeue_strategy: str = "default"
    worker_name: str | None = None
    health_host: str = "127.0.0.1"
    health_port: int = 8001
    store_url: str = "sqlite:///var/worker.db"
    input_roots: tuple[Path, ...] = field(default_factory=lambda: (Path.cwd(),))
    job_timeout: int = 600
    # The longest a job may run, whatever timeout its hash carries (<= 0 or None: this).
    max_job_timeout: int = 3600
    shutdown_timeout: int = 25
    log_level: str = "INFO"
    log_format: str = "text"
    serializer: str = "json"
    embed_model_dir: Path = field(default_factory=lambda: Path.cwd() / "var" / "model")
    embed_precision: str = "fp32"
    embed_threads: int = 0  # 0: cores divided by worker processes on the host
    workers_per_host: int = 1
    # Texts per embedding batch are capped so that texts x longest text <= this many tokens.
    embed_batch_tokens: int = 2048
    # Most texts one embed_texts job may carry.
    max_embed_texts: int = 4096
    # Liveness: the main loop must have ticked within this many seconds.
    liveness_timeout: float = 30.0
    # Grace beyond a job's own timeout before liveness reports the job as stuck.
    job_grace: float = 60.0
    # Idle dequeue blocks at most this long, so the main loop ticks while idle.
    poll_interval: int = 1
    max_pdf_bytes: int = 100 * 1024 * 1024
    max_inline_bytes: int = 10 * 1024 * 1024
    # Largest job hash read from Redis, and the most its data (the arguments) may unpack to.
    max_job_data_bytes: int = 64 * 1024 * 1024
    max_pages: int = 2000
    # Text one page, and one document, may expand to (a small PDF can hold gigabytes of text).
    max_page_chars: int = 100_000
    max_document_chars: int = 10_000_000
    chunk_tokens: int = 256
    chunk_overlap: int = 32
    # Seconds a store write waits for another writer's lock before the job fails as transient.
    store_busy_timeout: float = 30.0
    # PostgreSQL search: HNSW candidate list size (hnsw.ef_search); higher is more exact and slower.
    hnsw_ef_search: int = 200
    # Address-space limit of a work-horse in MiB; 0 (set explicitly): none. Default: half the
    # memory of the host or cgroup, between 2 and 64 GiB (see default_horse_memory_mb).
    horse_memory_mb: int = field(default_factory=default_horse_memory_mb)
    # Resident-memory ceiling of the long-lived parent (not its horses) in MiB; 0: none. Past it
    # the daemon stops warm and exits 4, for its supervisor to start a fresh one.
    daemon_memory_mb: int = 1024
    # Dotted names of the user's own job functions, registered beside the built-in ones.
    extra_jobs: tuple[str, ...] = ()
    # RQ job webhooks are sent only to these hosts (none: webhooks are off), with this timeout.
    webhook_hosts: tuple[str, ...] = ()
    webhook_timeout: int = 5
    # Attempts after which a job that keeps killing its worker is failed.
    max_attempts: int = 3
    # Seconds between automatic retries of transient failures (their count is the number of retries).
    retry_intervals: tuple[int, ...] = (5, 30, 120)
    # A worker silent this long is dead: its started jobs are put back on their queues.
    dead_worker_after: float = 45.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        cwd = Path.cwd()
        queues = tuple(q.strip() for q in env.get("WORKER_QUEUES", "high,default,low").split(",") if q.strip())
        if not queues:
            raise SettingsError("WORKER_QUEUES names no queue")
        roots_raw = env.get("INPUT_ROOTS", "")
        roots = tuple(Path(p).expanduser() for p in roots_raw.split(":") if p.strip()) or (cwd,)
        log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        model_dir = env.get("EMBED_MODEL_DIR", "").strip()
        settings = cls(
            redis_url=env.get("REDIS_URL", "").strip() or cls.redis_url,
            redis_sentinels=parse_sentinels(env.get("REDIS_SENTINELS", "")),
            redis_sentinel_master=env.get("REDIS_SENTINEL_MASTER", "").strip(),
            queues=queues,
            dequeue_strategy=_choice(env, "DEQUEUE_STRATEGY", "default", ("default", "round_robin", "random")),
            worker_name=env.get("WORKER_NAME", "").strip() or None,
            health_host=env.get("HEALTH_HOST", "").strip() or cls.health_host,
            health_port=_int(env, "HEALTH_PORT", cls.health_port),
            store_url=env.get("STORE_URL", "").strip() or cls.store_url,
            input_roots=roots,
            job_timeout=_int(env, "JOB_TIMEOUT", cls.job_timeout, 1),
            max_job_timeout=_int(env, "MAX_JOB_TIMEOUT", cls.max_job_timeout, 1),
            shutdown_timeout=_int(env, "SHUTDOWN_TIMEOUT", cls.shutdown_timeout, 0),
            log_level=log_level,
            log_format=_choice(env, "LOG_FORMAT", "text", ("text", "json")),
            serializer=_choice(env, "WORKER_SERIALIZER", "json", ("json", "pickle")),
            embed_model_dir=Path(model_dir).expanduser() if model_dir else cwd / "var" / "model",
            embed_precision=_choice(env, "EMBED_PRECISION", "fp32", ("fp32", "int8")),
            embed_threads=_int(env, "EMBED_THREADS", 0),
            workers_per_host=_int(env, "WORKERS_PER_HOST", 1, 1),
            embed_batch_tokens=_int(env, "EMBED_BATCH_TOKENS", cls.embed_batch_tokens, 256),
            max_embed_texts=_int(env, "MAX_EMBED_TEXTS", cls.max_embed_texts, 1),
            liveness_timeout=_float(env, "LIVENESS_TIMEOUT", cls.liveness_timeout, 1.0),
            job_grace=_float(env, "JOB_GRACE", cls.job_grace),
            poll_interval=_int(env, "POLL_INTERVAL", cls.poll_interval, 1),
            max_pdf_bytes=_int(env, "MAX_PDF_BYTES", cls.max_pdf_bytes, 1),
            max_inline_bytes=_int(env, "MAX_INLINE_BYTES", cls.max_inline_bytes, 1),
            max_job_data_bytes=_int(env, "MAX_JOB_DATA_BYTES", cls.max_job_data_bytes, 1024),
            max_pages=_int(env, "MAX_PAGES", cls.max_pages, 1),
            max_page_chars=_int(env, "MAX_PAGE_CHARS", cls.max_page_chars, 1),
            max_document_chars=_int(env, "MAX_DOCUMENT_CHARS", cls.max_document_chars, 1),
            chunk_tokens=_int(env, "CHUNK_TOKENS", cls.chunk_tokens, 16),
            chunk_overlap=_int(env, "CHUNK_OVERLAP", cls.chunk_overlap, 0),
            store_busy_timeout=_float(env, "STORE_BUSY_TIMEOUT", cls.store_busy_timeout, 0.0),
            hnsw_ef_search=_int(env, "HNSW_EF_SEARCH", cls.hnsw_ef_search, 1),
            horse_memory_mb=_int(env, "HORSE_MEMORY_MB", default_horse_memory_mb()),
            daemon_memory_mb=_int(env, "DAEMON_MEMORY_MB", cls.daemon_memory_mb),
            extra_jobs=tuple(n.strip() for n in env.get("EXTRA_JOBS", "").split(",") if n.strip()),
            webhook_hosts=tuple(h.strip().lower() for h in env.get("WEBHOOK_HOSTS", "").split(",") if h.strip()),
            webhook_timeout=_int(env, "WEBHOOK_TIMEOUT", cls.webhook_timeout, 1),
            max_attempts=_int(env, "MAX_ATTEMPTS", cls.max_attempts, 1),
            retry_intervals=_int_list(env, "RETRY_INTERVALS", cls.retry_intervals),
            dead_worker_after=_float(env, "DEAD_WORKER_AFTER", cls.dead_worker_after, 2.0),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
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
        if self.chunk_tokens > 256:
            raise SettingsError("CHUNK_TOKENS cannot exceed the model's window of 256")
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise SettingsError("CHUNK_OVERLAP must be less than half of CHUNK_TOKENS")
        check_store_url(self.store_url)
        if not 1 <= self.hnsw_ef_search <= 1000:
            raise SettingsError(f"HNSW_EF_SEARCH must be 1..1000 (pgvector's range), got {self.hnsw_ef_search}")
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
        """onnxruntime intra-op threads: EMBED_THREADS, or the cores shared among the host's workers."""
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
