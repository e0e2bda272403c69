"""Prometheus text exposition (format 0.0.4) of the worker's state and its queues.

Job counts come from the parent's in-memory `LiveState`, recorded when each work-horse
ends, so every job is counted once whichever horse ran it. Queue figures are read from
Redis with the health server's own short-timeout connection; when Redis is away they are
left out and `worker_redis_up` says 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from rq.queue import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from worker.safe import cut, escape
from worker.state import DURATION_BUCKETS, TEXT_LIMIT, LiveState, State

COUNTER_HELP = {
    "pages": "PDF pages extracted",
    "pages_without_text": "PDF pages that had no text layer",
    "chunks": "Text chunks produced",
    "embedding_tokens": "Word pieces run through the embedding model",
    "embedding_texts": "Texts embedded",
}


def _escape(value: str) -> str:
    """A label value as the text format writes it. Values from jobs arrive made safe and from a
    bounded set (LiveState.job_ended); anything else is escaped and bounded here too."""
    value = cut(value if value.isprintable() else escape(value), TEXT_LIMIT)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


def queue_figures(client, queues: Sequence[str]) -> dict[str, dict[str, int]]:
    """Depth, started and failed counts per queue, in one pipelined round trip."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(Queue.redis_queue_namespace_prefix + q)
        pipe.zcard(StartedJobRegistry.key_template.format(q))
        pipe.zcard(FailedJobRegistry.key_template.format(q))
    values = pipe.execute()
    return {
        q: {"depth": values[3 * i], "started": values[3 * i + 1], "failed": values[3 * i + 2]}
        for i, q in enumerate(queues)
    }


def render(
    state: LiveState,
    redis_up: bool,
    queues: dict[str, dict[str, int]] | None,
    boundaries: tuple[int, dict[str, int]] = (0, {}),
) -> str:
    """`boundaries`: entries quarantined, and errors caught by the daemon's boundaries by place
    (a fixed set of names in the daemon's code, never from a job)."""
    snap = state.metrics_snapshot()
    worker = state.name
    out: list[str] = []
    _jobs(out, worker, snap)
    _worker(out, worker, snap, redis_up)
    _boundaries(out, worker, *boundaries)
    if queues:
        _queues(out, queues)
    out.append("")
    return "\n".join(out)


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _jobs(out: list[str], worker: str, snap: dict) -> None:
    """Jobs ended, by outcome, and their durations."""
    # Counters are declared under their sample name, `..._total`, as text format 0.0.4 has it.
    _family(out, "worker_jobs_total", "counter", "Jobs ended in this worker, by queue, function and outcome")
    for (queue, function, outcome), n in sorted(snap["outcomes"].items()):
        labels = _labels(worker=worker, queue=queue, function=function, outcome=outcome)
        out.append(f"worker_jobs_total{labels} {n}")

    _family(out, "worker_job_duration_seconds", "histogram", "Wall time of jobs, from fork to the horse's exit")
    for queue, hist in sorted(snap["durations"].items()):
        # Histogram.observe counts a value in every bucket whose bound it fits under, so the
        # stored buckets are already cumulative, as the exposition format wants them.
        bounds = [*DURATION_BUCKETS, float("inf")]
        for bound, n in zip(bounds, [*hist.buckets, hist.count], strict=True):
            labels = _labels(worker=worker, queue=queue, le=_fmt(bound))
            out.append(f"worker_job_duration_seconds_bucket{labels} {n}")
        labels = _labels(worker=worker, queue=queue)
        out.append(f"worker_job_duration_seconds_sum{labels} {_fmt(hist.total)}")
        out.append(f"worker_job_duration_seconds_count{labels} {hist.count}")


def _worker(out: list[str], worker: str, snap: dict, redis_up: bool) -> None:
    """What the jobs counted (pages, chunks, tokens...), the worker's state, Redis up."""
    for name, help_text in COUNTER_HELP.items():
        _family(out, f"worker_{name}_total", "counter", help_text)
        out.append(f"worker_{name}_total{_labels(worker=worker)} {_fmt(snap['counters'].get(name, 0))}")

    _family(out, "worker_state", "gauge", "1 for the worker's current state")
    for s in State:
        out.append(f"worker_state{_labels(worker=worker, state=s)} {1 if snap['state'] == s else 0}")

    _family(out, "worker_redis_up", "gauge", "1 when Redis answered the last PING")
    out.append(f"worker_redis_up{_labels(worker=worker)} {1 if redis_up else 0}")

    if embedding := snap.get("embedding"):
        _family(out, "worker_embed_precision_info", "gauge", "1: the embedding precision that runs, asked for, and why")
        out.append(f"worker_embed_precision_info{_labels(worker=worker, **embedding)} 1")


def _boundaries(out: list[str], worker: str, quarantined: int, caught: dict[str, int]) -> None:
    _family(out, "worker_quarantined_total", "counter", "Entries that were no job, moved to worker:quarantine")
    out.append(f"worker_quarantined_total{_labels(worker=worker)} {quarantined}")
    _family(out, "worker_boundary_errors_total", "counter", "Errors tied to one job or entry, caught by the daemon")
    for where, n in sorted(caught.items()):
        out.append(f"worker_boundary_errors_total{_labels(worker=worker, where=where)} {n}")


def _queues(out: list[str], queues: dict[str, dict[str, int]]) -> None:
    """Depth, started and failed registries per queue, as read from Redis."""
    for figure, help_text in (
        ("depth", "Jobs waiting in the queue"),
        ("started", "Jobs in the queue's started registry"),
        ("failed", "Jobs in the queue's failed registry"),
    ):
        _family(out, f"worker_queue_{figure}", "gauge", help_text)
        for q, fig in queues.items():
            out.append(f"worker_queue_{figure}{_labels(queue=q)} {fig[figure]}")
