"""Data room: rendered scenes, training shards, eval sets, LAION ingestion, caption analyses."""
