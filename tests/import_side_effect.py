"""A module whose import leaves a mark (the file named by IMPORT_MARKER): tests check that a job
hash naming it never gets it imported, since it is not a registered job."""

import os
from pathlib import Path

if os.environ.get("IMPORT_MARKER"):
    Path(os.environ["IMPORT_MARKER"]).write_text("imported")


def callback(*args) -> None:
    """Would run as a callback if anything imported it."""
