"""Kept for the code and tests that import `worker.store_copy`: copying stores is worker/store/copy.py."""

from worker.store.copy import CopyReport, check_dimensions, copy_documents, copy_store  # noqa: F401
