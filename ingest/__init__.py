"""Ingest side: MQTT -> Kafka bridge, verifying batch consumer, DuckDB store, ledger."""
