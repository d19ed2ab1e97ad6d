"""Developer tooling, never imported by ``edge_agent`` or ``ingest``: the local stack (mosquitto,
the Kafka-protocol broker on a local S3 server), the dev PKI and secured test broker, the anvil
runner, the demo, and the ``telematics`` commands that drive them (registered as a command group)."""
