"""What the edge agent and the ingest share without domain logic: configuration loading, the MQTT
TLS/credentials helper, device key files, the progress bar. Imports only ``schemas``."""
