"""Deterministic, seedable simulators that produce schema-valid telematics records."""
