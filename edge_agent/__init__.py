"""Vehicle-side agent: samples -> blocks -> Ed25519 signature -> MQTT."""
