"""The RQ internals this package relies on (worker/rqcompat.py)."""

from __future__ import annotations


def test_rq_internals_this_package_uses_are_all_there():
    """RQ is pinned; an upgrade that removes or renames an internal we override fails here."""
    from worker import rqcompat

    assert rqcompat.missing() == []
