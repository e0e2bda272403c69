"""The old name of worker/display.py, for tests/test_progressbar.py (tests stay unchanged)."""

import sys

from worker import display

sys.modules[__name__] = display
