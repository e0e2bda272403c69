"""Jobs used only by the benchmarks (registered through EXTRA_JOBS)."""

import time


def spin(seconds: float) -> int:
    """Burn one core for `seconds`."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n
