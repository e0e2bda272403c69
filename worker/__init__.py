"""worker: a document-ingestion worker daemon on RQ."""

__version__ = "0.1.0"
