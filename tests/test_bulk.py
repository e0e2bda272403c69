"""Bulk embeddings: records read by byte range, shards on several real workers, each id once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODEL_DIR, queue, wait_for, worker_env
from tests.test_boundaries import horse_pid
from worker.errors import DuplicateIdError, InputTooLargeError, InvalidArgumentsError, PathNotAllowedError, RecordError
from worker.records import Reader, read, scan

FAST = {"DEAD_WORKER_AFTER": "2"}


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def text_of(i: int) -> str:
    return f"record {i}: " + " ".join(f"word{i * 7 % (j + 3)}" for j in range(i % 40 + 1))


def write_input(path: Path, n: int, missing_every: int = 0) -> list[dict]:
    records = [
        {"id": f"r{i}", "text": None if missing_every and i % missing_every == 0 else text_of(i)} for i in range(n)
    ]
    path.write_bytes(jsonl(records))
    return records


# -- reading records --------------------------------------------------------------------------------


def test_shards_cover_every_record_once_at_record_boundaries():
    records = [{"id": i, "text": text_of(i) if i % 7 else None} for i in range(25)]
    data = jsonl(records) + b"\n\n"
    plan = scan(io.BytesIO(data), Reader("jsonl", "id", "text"), 10, 1000)
    assert (plan.records, plan.texts, plan.without_text) == (25, 21, 4)
    assert plan.without_text_lines == [1, 8, 15, 22]
    assert [s.records for s in plan.shards] == [10, 10, 5]
    assert plan.shards[0].start == 0 and plan.shards[-1].end == len(data)
    assert all(a.end == b.start for a, b in zip(plan.shards, plan.shards[1:], strict=False))
    seen = [r for s in plan.shards for r in read(io.BytesIO(data), Reader("jsonl", "id", "text"), s)]
    assert [r.id for r in seen] == [str(i) for i in range(25)]
    assert [r.seq for r in seen] == list(range(25))
    assert [r.line for r in seen] == list(range(1, 26))


def test_csv_with_a_byte_order_mark_and_a_quoted_line_break():
    data = b'\xef\xbb\xbfid,text,other\n1,"hello\nworld",x\n2,b,y\n3,,z\n'
    reader = Reader("csv", "id", "text")
    plan = scan(io.BytesIO(data), reader, 2, 100)
    assert plan.records == 3 and plan.without_text_lines == [5]
    first = read(io.BytesIO(data), reader, plan.shards[0])
    assert [(r.line, r.id, r.text) for r in first] == [(2, "1", "hello\nworld"), (4, "2", "b")]


@pytest.mark.parametrize(
    ("data", "error", "says"),
    [
        (
            b'{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n',
            DuplicateIdError,
            "id '1' appears twice: on line 1 and on line 2",
        ),
        (b'{"id": 1, "text": "a"}\nnot json\n', RecordError, "line 2 is not JSON"),
        (b'{"id": 1, "text": "a"}\n[1, 2]\n', RecordError, "line 2 is a JSON list"),
        (b'{"key": 1, "text": "a"}\n', RecordError, "line 1 has no field 'id'; its fields: key, text"),
        (b'{"id": 1, "text": "caf\xe9"}\n', RecordError, "line 1 is not UTF-8"),
        (b'{"id": 1, "text": 5}\n', RecordError, "line 1: field 'text' must be a string or null, got int"),
        (b'{"id": true, "text": "a"}\n', RecordError, "field 'id' must be a string or an integer"),
        (b'{"id": "a\\u0000b", "text": "a"}\n', RecordError, "NUL"),
        (b"\n\n", RecordError, "no record"),
    ],
)
def test_bad_records_are_typed_errors_naming_the_line(data, error, says):
    with pytest.raises(error) as caught:
        scan(io.BytesIO(data), Reader("jsonl", "id", "text"), 10, 1000)
    assert says in str(caught.value)


def test_csv_header_without_the_fields_names_the_columns():
    with pytest.raises(RecordError, match="no column 'id'.*its columns: key, body"):
        scan(io.BytesIO(b"key,body\n1,a\n"), Reader("csv", "id", "text"), 10, 100)


def test_too_many_records_and_a_changed_file_are_refused():
    data = jsonl([{"id": i, "text": "x"} for i in range(20)])
    with pytest.raises(InputTooLargeError, match="MAX_BULK_RECORDS"):
        scan(io.BytesIO(data), Reader("jsonl", "id", "text"), 10, 19)
    plan = scan(io.BytesIO(data), Reader("jsonl", "id", "text"), 10, 100)
    changed = data.replace(b'"id": 3,', b'"id": 9,')
    with pytest.raises(RecordError, match="changed since the bulk job read the file"):
        read(io.BytesIO(changed), Reader("jsonl", "id", "text"), plan.shards[0])


# -- the job called as a plain function, on both stores -------------------------------------------


@pytest.fixture()
def bulk_env(tmp_path, monkeypatch, store_url):
    from worker.settings import Settings, set_settings

    env = {
        "INPUT_ROOTS": str(tmp_path),
        "STORE_URL": store_url,
        "EMBED_MODEL_DIR": str(MODEL_DIR),
        "BULK_SHARD_RECORDS": "40",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    set_settings(Settings.from_env())
    yield env
    set_settings(None)


def test_plain_call_embeds_each_id_once_equal_to_embed_texts_and_skips_done_shards(tmp_path, bulk_env):
    from worker.jobs import embed_bulk, embed_texts
    from worker.store import open_store
    from worker.store.vectors import Collections

    records = write_input(tmp_path / "in.jsonl", 130, missing_every=50)
    first = embed_bulk(str(tmp_path / "in.jsonl"), "products")
    assert first["records"] == 130 and first["without_text"] == {"count": 3, "lines": [1, 51, 101]}
    assert first["shards"] == 4 and first["shards_skipped"] == 0
    assert first["result"] == {"collection": "products", "complete": True, "vectors": 127, "records": 130}
    again = embed_bulk(str(tmp_path / "in.jsonl"), "products")
    assert again["shards_skipped"] == 4 and again["result"]["vectors"] == 127
    with open_store(bulk_env["STORE_URL"]) as store:
        batches = list(Collections(store).export("products"))
    ids = [i for batch, _ in batches for i in batch]
    vectors = np.concatenate([v for _, v in batches])
    expected = [r["id"] for r in records if r["text"]]
    assert ids == expected  # record order, each once
    sample = [5, 60, 129]
    reference = np.array(embed_texts([text_of(i) for i in sample])["vectors"])
    got = vectors[[expected.index(f"r{i}") for i in sample]]
    assert np.allclose((reference * got).sum(axis=1), 1.0, atol=1e-5)


def test_plain_call_refuses_bad_arguments_before_any_work(tmp_path, bulk_env):
    from worker.jobs import embed_bulk

    (tmp_path / "in.txt").write_text("hello")
    with pytest.raises(InvalidArgumentsError, match="JSON Lines"):
        embed_bulk(str(tmp_path / "in.txt"), "c")
    with pytest.raises(InvalidArgumentsError, match="collection must be"):
        embed_bulk(str(tmp_path / "in.jsonl"), "bad name!")
    with pytest.raises(PathNotAllowedError):
        embed_bulk("/etc/passwd.jsonl", "c")
    (tmp_path / "dup.jsonl").write_bytes(jsonl([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]))
    with pytest.raises(DuplicateIdError, match="on line 1 and on line 2"):
        embed_bulk(str(tmp_path / "dup.jsonl"), "c")


# -- real workers ---------------------------------------------------------------------------------------


def cli(args: list[str], env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def rq_worker_of(conn, pid: int):
    """RQ's record of the worker with this pid (None: not registered)."""
    from rq import Worker
    from rq.serializers import JSONSerializer

    return next((w for w in Worker.all(connection=conn, serializer=JSONSerializer) if w.pid == pid), None)


def current_job_of(conn, pid: int) -> str | None:
    """The job the worker with this pid is running, as Redis says (RQ's worker and executions)."""
    worker = rq_worker_of(conn, pid)
    return worker.get_current_job_id() if worker else None


def finished_shards_of(conn, parent_id: str, w, shards: int) -> int:
    """How many of the run's `shards` ended (finished) on the worker process `w`."""
    worker = rq_worker_of(conn, w.proc.pid)
    if worker is None:
        return 0
    ended = [conn.hmget(f"rq:job:{parent_id}-shard-{n}", "status", "worker_name") for n in range(shards)]
    return sum(status == b"finished" and name == worker.name.encode() for status, name in ended)


def stop_mid_shard(conn, w) -> int:
    """SIGSTOP the worker's horse while it runs a shard that has not ended (a quick shard may end
    between a look and a kill: stopped, it cannot); its pid."""
    for _ in range(200):
        horse = horse_pid(w)
        try:
            os.kill(horse, signal.SIGSTOP)
        except ProcessLookupError:  # ended meanwhile
            continue
        job_id = current_job_of(conn, w.proc.pid)
        if job_id and "-shard-" in job_id and conn.hget(f"rq:job:{job_id}", "status") == b"started":
            return horse
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("never caught the worker's horse mid-shard")


def test_two_workers_share_the_shards_and_a_killed_one_loses_nothing(start_worker, redis_conn, redis_url, tmp_path):
    env = {**FAST, "BULK_SHARD_RECORDS": "25"}
    records = write_input(tmp_path / "in.jsonl", 600, missing_every=97)
    a, b = start_worker(extra_env=env), start_worker(extra_env=env)
    q = queue(redis_conn)
    parent = q.enqueue("worker.jobs.embed_bulk", str(tmp_path / "in.jsonl"), "c1", job_timeout=600)
    wait_for(lambda: parent.get_status(refresh=True) == "finished", timeout=60, message="shards enqueued")
    final_id = parent.return_value()["final_job_id"]
    wait_for(lambda: len(parent.get_meta(refresh=True)["bulk"]["done"]) >= 3, timeout=60, message="shards done")
    # `a` may have run the parent job while `b` took the first shards: wait until `a` has ended
    # a shard of its own too, or the one it is killed in (run again by `b`) would be its only one.
    wait_for(lambda: finished_shards_of(redis_conn, parent.id, a, 24) > 0, timeout=60, message="a shard ended by a")
    horse = stop_mid_shard(redis_conn, a)
    os.kill(a.proc.pid, signal.SIGKILL)
    os.kill(horse, signal.SIGKILL)
    a.proc.wait(5)
    final = q.fetch_job(final_id)
    wait_for(lambda: final.get_status(refresh=True) in ("finished", "failed"), timeout=240, message="the run's end")
    assert final.get_status() == "finished", final.latest_result().exc_string
    texts = [r["id"] for r in records if r["text"]]
    assert final.return_value() == {"collection": "c1", "complete": True, "vectors": len(texts), "records": 600}
    meta = parent.get_meta(refresh=True)
    assert meta["progress"]["done"] == len(texts) and meta["progress"]["shards_done"] == 24
    shards = [q.fetch_job(f"{parent.id}-shard-{n}") for n in range(24)]
    assert len({job.worker_name for job in shards}) == 2  # both took shards
    assert sum(job.get_meta().get("abandoned", 0) for job in shards) == 1  # the killed one ran again
    env_cli = worker_env(redis_url, tmp_path, 0, "")
    out = cli(["vectors", "export", "c1", "--out", str(tmp_path / "c1.npy")], env_cli, tmp_path)
    assert out.returncode == 0, out.stderr
    ids = (tmp_path / "c1.ids.txt").read_text().splitlines()
    assert ids == texts  # each id exactly once, in record order
    assert np.load(tmp_path / "c1.npy").shape == (len(texts), 384)
    b.stop()


def test_enqueue_wait_follows_the_whole_run_and_vectors_commands(start_worker, redis_url, tmp_path):
    write_input(tmp_path / "in.jsonl", 90, missing_every=40)
    start_worker(extra_env={"BULK_SHARD_RECORDS": "30"})
    env = worker_env(redis_url, tmp_path, 0, "")
    out = cli(["enqueue", str(tmp_path / "in.jsonl"), "--collection", "c2", "--wait", "--json"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout)
    assert line["status"] == "finished" and line["result"]["result"]["vectors"] == 87
    out = cli(["enqueue", str(tmp_path / "in.jsonl"), "--collection", "c2", "--wait"], env, tmp_path)
    assert "87 vectors in c2, 3 records without text (lines 1, 41, 81), 3 shards (3 done before)" in out.stdout
    listed = cli(["vectors", "list"], env, tmp_path)
    assert "c2  87 vectors  90 records (3 without text)  complete" in listed.stdout
    assert cli(["vectors", "delete", "c2"], env, tmp_path).returncode == 0
    gone = cli(["vectors", "show", "c2"], env, tmp_path)
    assert gone.returncode != 0 and "no collection 'c2'" in gone.stderr


def test_bad_input_fails_the_parent_before_any_shard(start_worker, redis_conn, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b'{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n{"id": 1, "text": "c"}\n')
    start_worker()
    q = queue(redis_conn)
    job = q.enqueue("worker.jobs.embed_bulk", str(tmp_path / "in.jsonl"), "c3")
    wait_for(lambda: job.get_status(refresh=True) == "failed", message="the parent failed")
    assert "DuplicateIdError: id '1' appears twice: on line 1 and on line 3" in job.latest_result().exc_string
    assert q.count == 0 and not redis_conn.keys(f"rq:job:{job.id}-*")


def test_a_failed_shard_is_named_and_a_second_run_does_only_it(start_worker, redis_conn, tmp_path):
    path = tmp_path / "in.jsonl"
    write_input(path, 90)
    q = queue(redis_conn)
    parent = q.enqueue("worker.jobs.embed_bulk", str(path), "c4")
    env = {"BULK_SHARD_RECORDS": "30"}
    start_worker(extra_env=env, args=["--burst", "--max-jobs", "1"], ready=False).wait(60)  # the parent only
    assert parent.get_status(refresh=True) == "finished" and q.count == 3
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"r40"', b'"x40"'))  # shard 1 changes under the run
    start_worker(extra_env=env, args=["--burst"], ready=False).wait(120)
    final = q.fetch_job(parent.return_value()["final_job_id"])
    assert final.get_status(refresh=True) == "failed"
    assert "BulkIncompleteError: 1 of 3 shards of 'c4' did not finish (1)" in final.latest_result().exc_string
    shard = q.fetch_job(f"{parent.id}-shard-1")
    assert "changed since the bulk job read the file" in shard.latest_result().exc_string
    path.write_bytes(original)
    again = q.enqueue("worker.jobs.embed_bulk", str(path), "c4")
    start_worker(extra_env=env, args=["--burst"], ready=False).wait(120)
    assert again.return_value()["shards_skipped"] == 2
    final = q.fetch_job(again.return_value()["final_job_id"])
    assert final.return_value() == {"collection": "c4", "complete": True, "vectors": 90, "records": 90}


@pytest.mark.parametrize(
    ("shard", "fields"),
    [
        (None, None),
        ({"x": 1}, ["jsonl", "id", "text", None]),
        (
            {"shard": 0, "start": "0", "end": 9, "line": 1, "seq": 0, "records": 1, "texts": 1, "sha256": "x"},
            ["jsonl", "id", "text", None],
        ),
        (
            {"shard": 0, "start": 0, "end": 9, "line": 1, "seq": 0, "records": 1, "texts": 1, "sha256": "x"},
            ["pdf", "id", "text", None],
        ),
        ({"shard": 0, "start": 0, "end": 9, "line": 1, "seq": 0, "records": 1, "texts": 1, "sha256": "x"}, "jsonl"),
    ],
)
def test_a_shard_job_written_by_hand_with_garbage_is_a_typed_error(shard, fields):
    from worker.jobs import embed_shard

    with pytest.raises(InvalidArgumentsError, match="as embed_bulk enqueues them"):
        embed_shard("/tmp/in.jsonl", "c", fields, shard)
