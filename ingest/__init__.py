"""The ingestion job: `python -m ingest PATH...`."""
