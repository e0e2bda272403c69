"""The deadline rules of the parent's watch over a horse: a pure function of time."""

from __future__ import annotations

from worker.daemon.watch import Verdict, decide


def verdict(now, started=0.0, timeout=10.0, grace=5.0, warm=None, shutdown=20.0, cold=False) -> Verdict:
    return decide(now, started, timeout, grace, warm, shutdown, cold)[0]


def test_a_job_within_its_timeout_and_grace_runs_on():
    assert verdict(14.9) is Verdict.WAIT
    assert verdict(15.1) is Verdict.KILL


def test_a_warm_stop_waits_for_the_job_up_to_the_shutdown_timeout():
    assert verdict(5.0, warm=1.0, timeout=100) is Verdict.WAIT
    assert verdict(21.0, warm=1.0, timeout=100) is Verdict.PUT_BACK


def test_a_cold_stop_puts_back_at_once_and_wins_over_the_timeout():
    assert verdict(0.1, cold=True) is Verdict.PUT_BACK
    assert verdict(99.0, cold=True) is Verdict.PUT_BACK


def test_the_reason_names_the_rule():
    assert "SHUTDOWN_TIMEOUT=20.0s" in decide(30.0, 0.0, 100.0, 5.0, 1.0, 20.0, False)[1]
    assert "timeout" in decide(16.0, 0.0, 10.0, 5.0, None, 20.0, False)[1]
