"""The agent's main loop: signal sources -> collector (policies, privacy) -> agent (blocks, spool).

One thread does everything: it reads every source with a short timeout, feeds the updates to the
collector, hands the records it returns to the agent, and lets the agent settle acknowledgements
and replay its spool even when no new record arrived. With a live source (CAN), the collector is
also ticked with the wall clock, so periodic samples keep their rate when the bus is quiet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.agent import Agent
from edge_agent.collect import Collector
from edge_agent.config import AgentConfig
from edge_agent.inputs import SignalSource
from edge_agent.privacy import PrivacyFilter


@dataclass
class RunStats:
    updates: int = 0
    records: int = 0
    loops: int = 0


def sampling_summary(cfg: AgentConfig) -> dict[str, str | int | float | bool]:
    """What the birth message announces about the sampling configuration."""
    out: dict[str, str | int | float | bool] = {"source": cfg.source.kind, "gnss": cfg.source.gnss}
    for g in cfg.collect.groups:
        out[f"group.{g.name}.hz"] = g.rate_hz
    for t in cfg.collect.triggers:
        out[f"trigger.{t.name}"] = (
            f"{t.signal} {t.op} {t.threshold} -> {t.rate_hz} Hz [-{t.pre_s}s, +{t.post_s}s]"
        )
    out["privacy_zones"] = len(cfg.privacy.zones)
    return out


def model_rate_hz(cfg: AgentConfig) -> float:
    """The simulator's step rate: fast enough for the fastest group or trigger window."""
    rates = [g.rate_hz for g in cfg.collect.groups] + [t.rate_hz for t in cfg.collect.triggers]
    return max([cfg.edge.sample_rate_hz, *rates])


def make_collector(cfg: AgentConfig) -> Collector:
    privacy = PrivacyFilter(cfg.privacy) if cfg.privacy.zones else None
    return Collector(cfg.collect, privacy)


class Runner:
    def __init__(
        self,
        agent: Agent,
        collector: Collector,
        sources: list[SignalSource],
        *,
        wall_clock_ticks: bool,
        read_timeout: float = 0.02,
    ) -> None:
        self.agent = agent
        self.collector = collector
        self.sources = sources
        self.wall_clock_ticks = wall_clock_ticks
        self.read_timeout = read_timeout
        self.stats = RunStats()

    def step(self) -> None:
        collector, agent, st = self.collector, self.agent, self.stats
        for src in self.sources:
            updates = src.read(self.read_timeout)
            if updates:
                st.updates += len(updates)
                for r in collector.feed(updates):
                    agent.offer(r)
                    st.records += 1
        if self.wall_clock_ticks:
            for r in collector.tick(time.time_ns()):
                agent.offer(r)
                st.records += 1
        agent.pump()
        st.loops += 1

    def run(self, stop: Callable[[], bool], *, done: Callable[[], bool] = lambda: False) -> RunStats:
        while not stop() and not done():
            self.step()
        return self.stats
