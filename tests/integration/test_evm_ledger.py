"""The EVM ledger backend against a real anvil node: batches anchored through the real pipeline (MQTT,
Kafka, consumer), every proof bundle verified against the chain, and a node outage that holds offsets,
loses nothing and resumes. Checkpoint mode (one transaction for many batches) on the offline ingest."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.anvil import ANVIL_DEV_KEY_0
from ingest.config import Config, EvmConfig
from ingest.ledger.base import LedgerError, load_or_create_key
from ingest.ledger.evm import EvmLedger, check_anchors_on_chain
from ingest.ledger.local import LocalLedger
from ingest.ops.audit import Auditor
from ingest.ops.proofs import Prover, RowRef
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.proof import encode_bundle, verify_bundle
from simulators.offline import ingest_offline, make_fleet
from tests.integration.evm_fixtures import anvil_node, dev_client
from tests.integration.harness import publish, wait_until, write_config

pytestmark = pytest.mark.integration


def _evm_cfg(env, url: str) -> Config:  # type: ignore[no-untyped-def]
    b = msgspec.to_builtins(env.cfg)
    b["ledger"]["backend"] = "evm"
    b["ledger"]["evm"].update(rpc_url=url, confirmations=1, timeout_s=5.0)
    # Small batches, so that a short run makes many of them (a batch holds whole bundles: none here).
    b["ingest"].update(batch_max_records=30, poll_max_records=3)
    b["bridge"].update(bundle_max_messages=1)
    b["retry"] = {"min_s": 0.3, "max_s": 2.0}
    b["edge"].update(block_max_records=10)
    cfg = msgspec.convert(b, Config)
    cfg.path(cfg.ledger.evm.key_path).write_text(ANVIL_DEV_KEY_0 + "\n")
    env.cfg = cfg
    env.config_path = write_config(cfg, env.config_path)
    return cfg


def _publish(cfg: Config, records: int, seed: int) -> int:
    reg = Registry(cfg.path(cfg.registry.path))
    try:
        return publish(cfg, 3, records, seed, reg)
    finally:
        reg.close()


async def _committed_total(cfg: Config) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, group_id=cfg.ingest.group_id)
    await c.start()
    try:
        total = 0
        for p in range(cfg.kafka.partitions):
            total += await c.committed(TopicPartition(cfg.kafka.blocks_topic, p)) or 0
        return total
    finally:
        await c.stop()


def test_evm_pipeline_anchors_proves_and_survives_node_outage(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with anvil_node(tmp_path / "anvil") as node:
        cfg = _evm_cfg(env, node.url)
        env.start("consumer")
        env.start("bridge")
        n1 = _publish(cfg, 300, 41)
        st = wait_until(
            cfg, lambda s: s["records"] >= n1 and s["anchored"] == s["batches"], what="phase 1 stored"
        )
        committed = asyncio.run(_committed_total(cfg))
        assert committed > 0

        node.stop()  # the chain goes away (state saved, like a node restart)
        n2 = _publish(cfg, 300, 41)  # the same vehicles go on
        time.sleep(4)
        assert asyncio.run(_committed_total(cfg)) == committed, "offsets committed while the node was down"
        assert (wait_until(cfg, lambda s: True))["records"] == st["records"]
        node.restart()
        st = wait_until(
            cfg,
            lambda s: s["records"] >= n1 + n2 and s["anchored"] == s["batches"],
            timeout=120,
            what="everything anchored after the outage",
        )
        for p in env.procs:
            assert p.stop() == 0
        assert st["records"] == n1 + n2
        assert st["rejections"] == 0 and st["duplicates"] == 0
        assert st["batches"] >= 50

        store = FileStore(cfg.path(cfg.store.path), read_only=True)
        reg = Registry(cfg.path(cfg.registry.path))
        operator = load_or_create_key(cfg.path(cfg.ledger.key_path))
        local = LocalLedger(cfg.path(cfg.ledger.path), operator, origin=cfg.ledger.origin)
        witness = EvmLedger(local, None, None, cfg.ledger.evm)
        try:
            assert len(witness.anchors) == st["batches"]
            # One row of every batch: its bundle verifies offline and its anchor on the chain.
            rows = store.con.execute(
                "SELECT batch_no, device_id, block_seq, idx FROM (SELECT b.batch_no, d.device_id, d.block_seq,"
                " d.idx, row_number() OVER (PARTITION BY b.batch_no ORDER BY d.device_id, d.block_seq, d.idx) rn"
                " FROM blocks b JOIN driving_samples d ON d.device_id = b.device_id AND d.block_seq = b.seq)"
                " WHERE rn = 1 ORDER BY 1"
            ).fetchall()
            assert len(rows) == st["batches"]
            prover = Prover(store, reg, local, operator, witness=witness)
            seen_tx = set()
            for _batch_no, dev, seq, idx in rows:
                bundle = prover.bundle([RowRef("driving_samples", dev, int(seq), int(idx))])
                rep = verify_bundle(encode_bundle(bundle), operator_key=operator.public_key)
                assert rep.ok, rep.problems
                assert len(rep.anchors) == 1 and rep.anchors[0].kind == "batch"
                assert check_anchors_on_chain(node.url, rep.anchors) == []
                seen_tx.add(rep.anchors[0].tx_hash)
            assert len(seen_tx) == st["batches"]
            assert Auditor(store, reg, local, operator.public_key).run().ok
        finally:
            store.close()
            reg.close()


def test_checkpoint_mode_amortizes_and_holds_when_down(tmp_path: Path) -> None:
    with anvil_node(tmp_path / "anvil") as node:
        store = FileStore(tmp_path / "t.duckdb")
        reg = Registry(tmp_path / "r.sqlite")
        operator = load_or_create_key(tmp_path / "ingest.key")
        local = LocalLedger(tmp_path / "ledger.jsonl", operator)
        evm_cfg = EvmConfig(mode="checkpoint", checkpoint_batches=8, rpc_url=node.url)
        ledger = EvmLedger(local, dev_client(node), operator, evm_cfg)
        fleet = make_fleet(4, seed=5)
        ingest_offline(store, reg, ledger, fleet, blocks_per_vehicle=20, block_records=10, batch_records=40)
        assert local.size == 20
        ledger.sync(force=True)
        cps = sorted(n for k, n in ledger.anchors if k == "checkpoint")
        assert cps == [8, 16, 20]  # 3 transactions for 20 batches
        prover = Prover(store, reg, local, operator, witness=ledger)
        for batch_no in (0, 7, 8, 19):
            dev, seq, idx = store.con.execute(
                "SELECT d.device_id, d.block_seq, d.idx FROM blocks b JOIN driving_samples d"
                " ON d.device_id = b.device_id AND d.block_seq = b.seq WHERE b.batch_no = ? LIMIT 1",
                [batch_no],
            ).fetchone()  # type: ignore[misc]
            bundle = prover.bundle([RowRef("driving_samples", dev, int(seq), int(idx))])
            rep = verify_bundle(encode_bundle(bundle), operator_key=operator.public_key)
            assert rep.ok, rep.problems
            (a,) = rep.anchors
            assert (
                a.kind == "checkpoint" and a.number == cps[next(i for i, c in enumerate(cps) if c > batch_no)]
            )
            assert check_anchors_on_chain(node.url, rep.anchors) == []

        # Node down: batches below the threshold are accepted into the local log; the due checkpoint
        # raises, so the consumer would hold its offsets; after the node is back it goes out.
        node.stop()
        for i in range(7):
            ledger.anchor(100 + i, bytes([i]) * 32, 1)
        with pytest.raises(LedgerError):
            ledger.anchor(107, bytes([7]) * 32, 1)
        node.restart()
        ledger.anchor(107, bytes([7]) * 32, 1)
        assert max(n for k, n in ledger.anchors if k == "checkpoint") == 28
        # A reopened backend sees the same anchors (they were recorded durably).
        again = EvmLedger(local, None, None, evm_cfg)
        assert again.anchors == ledger.anchors
        store.close()
        reg.close()
