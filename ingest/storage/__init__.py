"""Where verified data lives: the DuckDB store and the device registry."""
