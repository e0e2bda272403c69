"""Zero lost jobs under restarts, crashes and Redis outages.

`make chaos` runs these and prints their tables (a few minutes); `make test` has the single
faults, one test each, in test_recovery.py and test_daemon.py.
"""

from __future__ import annotations

import pytest

from tests.chaos import run_chaos, run_rq_alone, run_sentinel_failover


def _check(report) -> None:
    print("\n" + report.table())
    assert report.lost == [], report.lost
    assert report.wrongly_failed == [], report.wrongly_failed
    assert report.duplicates == 0
    assert report.missing_documents == 0
    assert report.chunk_mismatches == 0
    assert report.recovered == report.interrupted
    assert report.worker_exits == [], report.worker_exits


@pytest.mark.slow
def test_chaos_short(tmp_path):
    _check(run_chaos(tmp_path, documents=8, embed_jobs=6, slow_jobs=8, bad_jobs=4, faults=8, workers=2))


@pytest.mark.slow
def test_chaos_full(tmp_path):
    _check(run_chaos(tmp_path, documents=60, embed_jobs=60, slow_jobs=60, bad_jobs=40, faults=60, workers=3))


@pytest.mark.slow
def test_chaos_sentinel_failover(tmp_path):
    """Redis Sentinel moves the primary four times while two workers ingest and sleep: 0 lost,
    0 duplicated, 0 worker exits."""
    _check(run_sentinel_failover(tmp_path, documents=12, slow_jobs=40, failovers=4, workers=2))


@pytest.mark.slow
def test_rq_alone_under_the_same_fault(tmp_path):
    """What plain RQ does with jobs whose worker was SIGKILLed: after a minute they are still not done."""
    result = run_rq_alone(tmp_path, jobs=4, observe=60)
    print("\nRQ alone:", result)
    assert result["finished"] == 0
