"""Whatever a producer writes to Redis, the worker goes on (a fuzzer for what a producer
can write). The generator and runner are in tests/fuzz.py; a failure prints the seed and each
case, and `.venv/bin/python -m tests.fuzz --seed S --case N` runs one case alone.

The sample (every known case, plus a few seeded random ones of each kind) runs in
`make test`; the full matrix (about 2,700 cases) runs in `make chaos`.
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz import Fuzzer, group_rounds, matrix, sample, sample_rounds, table

SEED = int(os.environ.get("FUZZ_SEED", "18"))
# Rerun a failing round case by case to tie each failure to its case (slower when things fail).
ISOLATE = os.environ.get("FUZZ_ISOLATE", "") == "1"


def _run(redis_conn, start_worker, cases, rounds) -> None:
    print(f"\nfuzz seed {SEED}: {len(cases)} cases in {len(rounds)} rounds")
    findings = Fuzzer(redis_conn, start_worker).run(cases, rounds, isolate=ISOLATE)
    assert not findings, f"seed {SEED}: {len(findings)} cases broke a promise\n" + table(findings)


def test_fuzz_sample(redis_conn, start_worker):
    cases = sample(SEED)
    _run(redis_conn, start_worker, cases, sample_rounds(cases))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", ["field", "data", "client", "queue", "registry", "worker", "command", "midrun", "warmstop"]
)
def test_fuzz_matrix(redis_conn, start_worker, kind):
    cases = [c for c in matrix(SEED) if c.kind == kind]
    _run(redis_conn, start_worker, cases, group_rounds(cases))
