"""The edge agent's configuration: one frozen, typed struct decoded once from TOML
(``common.config.load_toml(path, AgentConfig)``). Unknown keys are an error. Secrets are file paths,
never values. The MQTT and [edge] sections are shared with the ingest (``common.config``).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from common.config import EdgeConfig, MqttConfig
from edge_agent.collect import CollectConfig
from edge_agent.privacy import PrivacyConfig
from edge_agent.sources.can_config import CanConfig
from edge_agent.sources.gnss import GnssConfig


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Where signals come from: "simulator" (the built-in vehicle model, paced to the wall clock)
    # or "can" (a CAN bus decoded with the DBC of [can]).
    kind: Literal["simulator", "can"] = "simulator"
    # Also read position from an NMEA 0183 GNSS receiver ([gnss]).
    gnss: bool = False


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mqtt: MqttConfig = MqttConfig()
    edge: EdgeConfig = EdgeConfig()
    source: SourceConfig = SourceConfig()
    can: CanConfig = CanConfig()
    gnss: GnssConfig = GnssConfig()
    collect: CollectConfig = CollectConfig()
    privacy: PrivacyConfig = PrivacyConfig()
