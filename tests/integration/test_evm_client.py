"""The EVM client against a real anvil node: anchors, confirmations, a node that is down or hung,
a restart with its state file, refusals, and the retry protocol after a crash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from devtools.anvil import ANVIL_DEFAULT_CHAIN_ID, ANVIL_DEV_ADDRESS_0, ANVIL_DEV_KEY_0, Anvil
from ingest.ledger.evm_client import (
    ANCHOR_KIND_BATCH,
    ANCHOR_KIND_CHECKPOINT,
    EvmClient,
    EvmError,
    EvmRejected,
    anchor_calldata,
    parse_anchor_calldata,
)
from tests.integration.evm_fixtures import anvil_node, dev_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Init code that deploys a contract whose code is PUSH1 0 PUSH1 0 REVERT: every call to it reverts.
REVERTER_INIT = bytes.fromhex("6460006000fd6000526005601bf3")


def root(i: int) -> bytes:
    return hashlib.sha256(f"root {i}".encode()).digest()


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Anvil]:
    with anvil_node(tmp_path) as n:
        yield n


@pytest.fixture()
def client(node: Anvil) -> Iterator[EvmClient]:
    with dev_client(node) as c:
        yield c


def pending_nonce(node: Anvil) -> int:
    return int(node.rpc("eth_getTransactionCount", [ANVIL_DEV_ADDRESS_0, "pending"]), 16)


def test_three_anchors_round_trip(client: EvmClient) -> None:
    sent = []
    for i in range(3):
        data = anchor_calldata(ANCHOR_KIND_BATCH, i + 1, root(i))
        sent.append((client.send(data), data))
    for tx_hash, data in sent:
        tx = client.wait(tx_hash, confirmations=1, timeout_s=10)
        assert tx.tx_hash == tx_hash and tx.mined and tx.status == 1
        assert tx.data == data and tx.chain_id == ANVIL_DEFAULT_CHAIN_ID == client.chain_id()
        assert tx.sender == tx.to == ANVIL_DEV_ADDRESS_0
        assert tx.confirmations >= 1 and tx.block_hash.startswith("0x") and len(tx.block_hash) == 66
        assert client.fetch(tx_hash) == tx
    kinds = [parse_anchor_calldata(d) for _, d in sent]
    assert kinds == [(ANCHOR_KIND_BATCH, i + 1, root(i)) for i in range(3)]
    # Auto-mining: one block per transaction, in order.
    numbers = [client.wait(h, 1, 10).block_number for h, _ in sent]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3


def test_fetch_unknown_hash(client: EvmClient) -> None:
    assert client.fetch("0x" + "ab" * 32) is None
    with pytest.raises(ValueError, match="64 hex digits"):
        client.fetch("0x11")
    with pytest.raises(EvmError, match="unknown to the node"):
        client.wait("0x" + "ab" * 32, confirmations=1, timeout_s=0.3)


def test_confirmations_advance_with_mined_blocks(node: Anvil, client: EvmClient) -> None:
    h = client.send(anchor_calldata(ANCHOR_KIND_CHECKPOINT, 10, root(10)))
    first = client.wait(h, confirmations=1, timeout_s=10)
    assert first.confirmations == 1
    with pytest.raises(EvmError, match="1/3 confirmations"):
        client.wait(h, confirmations=3, timeout_s=0.3)
    node.mine(1)
    fetched = client.fetch(h)
    assert fetched is not None and fetched.confirmations == 2
    node.mine(1)
    done = client.wait(h, confirmations=3, timeout_s=10)
    assert done.confirmations == 3
    assert (done.block_number, done.block_hash) == (first.block_number, first.block_hash)


def test_pending_until_mined(node: Anvil, client: EvmClient) -> None:
    node.rpc("evm_setAutomine", [False])
    h = client.send(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1)))
    pending = client.fetch(h)
    assert pending is not None and not pending.mined and pending.confirmations == 0
    with pytest.raises(EvmError, match="still pending"):
        client.wait(h, confirmations=1, timeout_s=0.3)
    node.mine(1)
    assert client.wait(h, confirmations=1, timeout_s=10).mined


def test_interval_mining(tmp_path: Path) -> None:
    with anvil_node(tmp_path, block_time=0.2) as n, dev_client(n) as c:
        h = c.send(anchor_calldata(ANCHOR_KIND_BATCH, 5, root(5)))
        tx = c.wait(h, confirmations=3, timeout_s=10)
        assert tx.confirmations >= 3 and tx.status == 1


def test_node_down_then_restart_keeps_state(node: Anvil, client: EvmClient) -> None:
    before = client.wait(client.send(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1))), 1, 10)
    node.stop()
    data = anchor_calldata(ANCHOR_KIND_BATCH, 2, root(2))
    with pytest.raises(EvmError, match=r"127\.0\.0\.1") as err:
        client.send(data)
    assert not isinstance(err.value, EvmRejected)
    with pytest.raises(EvmError, match=before.tx_hash):
        client.fetch(before.tx_hash)
    with pytest.raises(EvmError, match=before.tx_hash):
        client.wait(before.tx_hash, confirmations=1, timeout_s=10)
    with pytest.raises(EvmError):
        client.chain_id()
    assert not client.healthy()

    node.start()  # same port, same state file: anvil dumped its state on SIGTERM
    assert client.healthy()
    assert client.fetch(before.tx_hash) == before  # same block number and hash; no new block yet
    after = client.wait(client.send(data), 1, 10)
    assert after.block_number == before.block_number + 1 and after.data == data


def test_hung_node_times_out(node: Anvil, tmp_path: Path) -> None:
    h = "0x" + "cd" * 32
    with dev_client(node, timeout_s=0.5) as c:
        node.pause()
        try:
            with pytest.raises(EvmError, match="Timeout"):
                c.fetch(h)
            with pytest.raises(EvmError):
                c.send(b"x")
            assert not c.healthy()
        finally:
            node.resume()
        assert c.fetch(h) is None


def test_wrong_chain_id_refused_before_sending(tmp_path: Path) -> None:
    platon_mainnet = 210425
    with anvil_node(tmp_path, chain_id=platon_mainnet) as n:
        with dev_client(n, chain_id=ANVIL_DEFAULT_CHAIN_ID) as wrong:
            assert wrong.chain_id() == platon_mainnet
            assert not wrong.healthy()
            with pytest.raises(
                EvmRejected, match=f"chain id {platon_mainnet}, configured {ANVIL_DEFAULT_CHAIN_ID}"
            ):
                wrong.send(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1)))
        assert pending_nonce(n) == 0  # nothing was sent
        with dev_client(n, chain_id=platon_mainnet) as right:
            assert right.healthy()
            tx = right.wait(right.send(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1))), 1, 10)
            assert tx.chain_id == platon_mainnet


def test_insufficient_funds_rejected(node: Anvil) -> None:
    poor = dev_client(node, private_key=Account.create().key.hex())
    with poor, pytest.raises(EvmRejected, match=r"(?i)insufficient funds"):
        poor.send(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1)))


def test_read_only_client_cannot_send(node: Anvil) -> None:
    with dev_client(node, private_key=None) as ro:
        assert ro.healthy()
        with pytest.raises(EvmRejected, match="read-only"):
            ro.send(b"x")


def test_reverting_target_rejected(node: Anvil, client: EvmClient) -> None:
    deployer = Account.from_key(ANVIL_DEV_KEY_0)
    create = deployer.sign_transaction(
        {
            "chainId": 31337,
            "nonce": 0,
            "value": 0,
            "data": REVERTER_INIT,
            "gas": 100_000,
            "gasPrice": 3 * 10**9,
        }
    )
    client.wait(node.rpc("eth_sendRawTransaction", ["0x" + create.raw_transaction.hex()]), 1, 10)
    contract = Web3.to_checksum_address(
        node.rpc("eth_getTransactionReceipt", ["0x" + create.hash.hex()])["contractAddress"]
    )
    to_reverter = EvmClient(node.url, private_key=ANVIL_DEV_KEY_0, to_address=contract)
    with to_reverter, pytest.raises(EvmRejected, match="reverts"):
        to_reverter.send(b"x")
    # Sent with a fixed gas limit it is mined, with status 0: wait says rejected.
    call = deployer.sign_transaction(
        {
            "chainId": 31337,
            "nonce": 1,
            "to": contract,
            "value": 0,
            "data": b"x",
            "gas": 50_000,
            "gasPrice": 3 * 10**9,
        }
    )
    h = node.rpc("eth_sendRawTransaction", ["0x" + call.raw_transaction.hex()])
    with pytest.raises(EvmRejected, match="status 0"):
        client.wait(h, confirmations=1, timeout_s=10)
    failed = client.fetch(h)
    assert failed is not None and failed.status == 0 and failed.to == contract


def test_broadcast_is_idempotent(node: Anvil, client: EvmClient) -> None:
    node.rpc("evm_setAutomine", [False])
    signed = client.sign(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1)))
    assert client.broadcast(signed) == signed.tx_hash
    assert client.broadcast(signed) == signed.tx_hash  # pending: "already imported"
    node.mine(1)
    assert client.broadcast(signed) == signed.tx_hash  # mined: "nonce too low", but it is ours
    assert client.wait(signed.tx_hash, 1, 10).data == signed.data
    # Another transaction with the same, now used, nonce is refused for good.
    node.rpc("evm_setAutomine", [True])
    stale = client.sign(b"other")
    client.send(b"takes the nonce")
    with pytest.raises(EvmRejected, match="nonce too low"):
        client.broadcast(stale)


def test_crash_recovery_rebroadcasts_the_same_tx(node: Anvil, client: EvmClient) -> None:
    kept = client.wait(client.send(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1))), 1, 10)
    node.stop()  # dumps the state with `kept`
    node.start()
    signed = client.sign(anchor_calldata(ANCHOR_KIND_BATCH, 2, root(2)))  # recorded before broadcasting
    client.wait(client.broadcast(signed), 1, 10)
    node.kill()  # SIGKILL: the node loses what it had not dumped (no --state-interval)
    node.start()
    assert client.fetch(kept.tx_hash) == kept
    assert client.fetch(signed.tx_hash) is None
    # The retry protocol: unknown hash → broadcast the recorded bytes again; same hash, mined again.
    assert client.broadcast(signed) == signed.tx_hash
    again = client.wait(signed.tx_hash, 1, 10)
    assert again.data == signed.data and again.block_number == kept.block_number + 1


def test_legacy_fees_without_base_fee(tmp_path: Path) -> None:
    # A pre-London chain has no base fee (PlatON-like): the client signs a legacy EIP-155 transaction.
    with Anvil(log_path=tmp_path / "anvil.log", extra_args=["--hardfork", "berlin"]) as n, dev_client(n) as c:
        signed = c.sign(anchor_calldata(ANCHOR_KIND_BATCH, 1, root(1)))
        assert signed.raw[0] >= 0xC0  # an RLP list, not a typed (EIP-2718) envelope
        tx = c.wait(c.broadcast(signed), 1, 10)
        assert tx.status == 1 and tx.data == signed.data
        assert int(n.rpc("eth_getTransactionByHash", [tx.tx_hash])["type"], 16) == 0
