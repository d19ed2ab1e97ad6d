"""The hot path: the MQTT->Kafka bridge, the verifying processor, the consumer that batches, stores
and anchors, and the service that runs them."""
