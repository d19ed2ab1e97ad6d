"""An EVM JSON-RPC client that anchors 32-byte roots as the calldata of 0-value transactions.

A pure adapter: it knows transactions, not batches. It talks the ``eth_*`` namespace over HTTP, so
it serves Ethereum, a local anvil node and PlatON alike (PlatON serves ``eth_*`` with 0x addresses).
The ledger backend built on it decides what to anchor and when.

Calldata format (:func:`anchor_calldata`, 45 bytes)::

    b"VTA1" || u8 kind || u64 big-endian number || root(32)
    kind 0 = one batch root       (number = batch number)
    kind 1 = a ledger checkpoint  (number = tree size)

Errors are grouped by what the caller does next:

* :class:`EvmError` — the node is unreachable, answered with an error, or the wait timed out:
  retry later.
* :class:`EvmRejected` (a subclass) — the node refused the transaction (insufficient funds, wrong
  chain id, nonce already used by another transaction, reverted): an operator has to look.

Retrying after a crash. A transaction is fixed once signed, so the safe order for a caller is:

1. ``signed = client.sign(data)`` and record ``signed.tx_hash`` and ``signed.raw`` durably;
2. ``client.broadcast(signed)`` — idempotent: sending the same signed bytes again is a no-op
   when the node already knows the transaction (pending or mined);
3. ``client.wait(signed.tx_hash, confirmations, timeout_s)``.

After a crash, for a recorded hash: ``fetch(tx_hash)`` is not None → go on with ``wait``; it is
None → ``broadcast(signed)`` again (same bytes, same hash); if that raises :class:`EvmRejected` with
"nonce too low", the nonce went to another transaction and the caller signs anew. A caller that
uses the one-step :meth:`EvmClient.send` instead must record the returned hash and, on retry, first
``fetch`` its previous hash: a crash between the broadcast and that record can only leave one
duplicate anchor of the same data on chain (harmless, it costs gas), never a conflicting one.

The client is not thread-safe for sending: nonces come from the node's ``pending`` count, so one
signing key belongs to one writer.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from eth_account import Account
from eth_typing import HexStr
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3Exception, Web3RPCError
from web3.middleware import ExtraDataToPOAMiddleware
from web3.types import Wei

T = TypeVar("T")

# -- calldata -------------------------------------------------------------------------------------------

ANCHOR_MAGIC = b"VTA1"
ANCHOR_KIND_BATCH = 0
ANCHOR_KIND_CHECKPOINT = 1
ANCHOR_KINDS = (ANCHOR_KIND_BATCH, ANCHOR_KIND_CHECKPOINT)
ANCHOR_CALLDATA_LEN = len(ANCHOR_MAGIC) + 1 + 8 + 32  # 45
_U64_MAX = 2**64 - 1


def anchor_calldata(kind: int, number: int, root: bytes) -> bytes:
    """``b"VTA1" || u8 kind || u64 BE number || root(32)``: the 45 calldata bytes of one anchor."""
    if kind not in ANCHOR_KINDS:
        raise ValueError(f"anchor kind must be one of {ANCHOR_KINDS}, got {kind!r}")
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= _U64_MAX:
        raise ValueError(f"anchor number must be an integer in [0, 2**64-1], got {number!r}")
    if not isinstance(root, bytes | bytearray | memoryview) or len(root) != 32:
        size = len(root) if isinstance(root, bytes | bytearray | memoryview) else type(root).__name__
        raise ValueError(f"anchor root must be 32 bytes, got {size}")
    return ANCHOR_MAGIC + struct.pack(">BQ", kind, number) + bytes(root)


def parse_anchor_calldata(data: bytes) -> tuple[int, int, bytes]:
    """The inverse of :func:`anchor_calldata`: ``(kind, number, root)``; ValueError on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"anchor calldata must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) != ANCHOR_CALLDATA_LEN:
        raise ValueError(f"anchor calldata must be {ANCHOR_CALLDATA_LEN} bytes, got {len(data)}")
    if data[:4] != ANCHOR_MAGIC:
        raise ValueError(f"anchor calldata must start with {ANCHOR_MAGIC!r}, got {data[:4]!r}")
    kind, number = struct.unpack(">BQ", data[4:13])
    if kind not in ANCHOR_KINDS:
        raise ValueError(f"anchor calldata kind must be one of {ANCHOR_KINDS}, got {kind}")
    return kind, number, data[13:]


# -- errors and values ----------------------------------------------------------------------------------


class EvmError(Exception):
    """The node is unreachable, answered with an error, or a wait timed out: retry later."""


class EvmRejected(EvmError):
    """The node refused the transaction, or it reverted: needs an operator, retrying will not help."""


@dataclass(frozen=True)
class EvmTx:
    """A transaction and its receipt as seen at one moment.

    A transaction the node knows but has not mined yet has ``block_number == -1``, ``block_hash == ""``,
    ``status == -1`` and ``confirmations == 0`` (see :attr:`mined`).
    """

    chain_id: int
    tx_hash: str
    block_number: int
    block_hash: str
    sender: str
    to: str
    data: bytes
    status: int
    confirmations: int

    @property
    def mined(self) -> bool:
        return self.block_number >= 0


@dataclass(frozen=True)
class EvmSignedTx:
    """A signed, not necessarily broadcast, transaction: record ``tx_hash`` and ``raw`` before sending."""

    tx_hash: str
    raw: bytes
    chain_id: int
    nonce: int
    sender: str
    to: str
    data: bytes


# Substrings of node errors to eth_sendRawTransaction / eth_estimateGas that mean "try again later"
# rather than "this transaction is wrong". Everything else the node says about a transaction is a refusal.
_TRANSIENT = (
    "underpriced",  # a pending transaction holds the nonce, or fees moved: it clears by itself
    "txpool is full",
    "rate limit",
    "limit exceeded",
    "too many requests",
    "try again",
    "timeout",
    "timed out",
    "busy",
    "syncing",
)
_TRANSIENT_CODES = (-32005,)  # "limit exceeded" (EIP-1474)
_HASH_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _redact(url: str) -> str:
    """scheme://host:port of an RPC URL: paths and user info often carry API keys."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<bad url>"
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Web3RPCError) and isinstance(exc.rpc_response, dict):
        err = exc.rpc_response.get("error")
        if isinstance(err, dict):
            return f"RPC error {err.get('code')}: {err.get('message')}"
    text = str(exc) or type(exc).__name__
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}: {text}"


def _is_transient(exc: Web3RPCError) -> bool:
    code: Any = None
    message = str(exc)
    if isinstance(exc.rpc_response, dict):
        err = exc.rpc_response.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            message = str(err.get("message", message))
    low = message.lower()
    return code in _TRANSIENT_CODES or any(s in low for s in _TRANSIENT)


def _check_hash(tx_hash: str) -> HexStr:
    if not isinstance(tx_hash, str) or not _HASH_RE.match(tx_hash):
        raise ValueError(f"a transaction hash is 0x and 64 hex digits, got {tx_hash!r}")
    return HexStr(tx_hash.lower())


# Errors a call through web3 can raise for a node or transport problem. requests' errors are OSErrors;
# ValueError covers undecodable answers.
_THIRD_PARTY = (Web3Exception, requests.RequestException, OSError, ValueError)


class EvmClient:
    """Send, wait for and fetch anchor transactions on one EVM JSON-RPC node.

    ``private_key`` may be None for a read-only client (``fetch``/``wait``, e.g. the offline verifier).
    ``to_address`` defaults to the sender itself. ``chain_id`` is what the node must report: when given,
    nothing is signed or sent to a node that reports another (:class:`EvmRejected`). Every HTTP request
    is bounded by ``timeout_s`` and not retried here: the caller retries.
    """

    def __init__(
        self,
        rpc_url: str,
        *,
        private_key: str | None = None,
        to_address: str | None = None,
        chain_id: int | None = None,
        timeout_s: float = 10.0,
        poll_interval_s: float = 0.2,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.rpc_url = rpc_url
        self._where = _redact(rpc_url)
        self.expected_chain_id = chain_id
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._account = Account.from_key(private_key) if private_key is not None else None
        self.address: str | None = self._account.address if self._account is not None else None
        if to_address is not None:
            self.to_address: str | None = Web3.to_checksum_address(to_address)
        else:
            self.to_address = self.address
        self._session = requests.Session()
        provider = HTTPProvider(
            rpc_url,
            request_kwargs={"timeout": timeout_s},
            session=self._session,
            exception_retry_configuration=None,
        )
        self._w3 = Web3(provider)
        # Chains with a long extraData (PoA, PlatON) fail web3's block validation without this; it
        # only renames the field, so it is harmless elsewhere.
        self._w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)

    # -- plumbing -------------------------------------------------------------------------------------
    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> EvmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EvmClient({self._where}, sender={self.address}, chain_id={self.expected_chain_id})"

    def _msg(self, what: str, exc: BaseException | None = None, tx_hash: str | None = None) -> str:
        parts = [f"EVM node {self._where}: {what}"]
        if tx_hash:
            parts.append(f"tx {tx_hash}")
        if exc is not None:
            parts.append(_describe(exc))
        return "; ".join(parts)

    def _read(self, what: str, fn: Callable[[], T], tx_hash: str | None = None) -> T:
        try:
            return fn()
        except _THIRD_PARTY as exc:
            raise EvmError(self._msg(what, exc, tx_hash)) from exc

    # -- reads ----------------------------------------------------------------------------------------
    def chain_id(self) -> int:
        """The chain id the node reports (``eth_chainId``)."""
        return int(self._read("eth_chainId failed", lambda: self._w3.eth.chain_id))

    def block_number(self) -> int:
        return int(self._read("eth_blockNumber failed", lambda: self._w3.eth.block_number))

    def healthy(self) -> bool:
        """The node answers, and with the configured chain id if one was given."""
        try:
            cid = self.chain_id()
        except EvmError:
            return False
        return self.expected_chain_id is None or cid == self.expected_chain_id

    def _checked_chain_id(self) -> int:
        cid = self.chain_id()
        if self.expected_chain_id is not None and cid != self.expected_chain_id:
            raise EvmRejected(
                self._msg(
                    f"the node reports chain id {cid}, configured {self.expected_chain_id}; nothing sent"
                )
            )
        return cid

    def fetch(self, tx_hash: str) -> EvmTx | None:
        """The transaction and its receipt as seen now, with the current confirmation count.

        None when the node does not know the hash. A pending transaction comes back with
        ``mined == False``.
        """
        h = _check_hash(tx_hash)
        eth = self._w3.eth
        for _ in range(3):
            try:
                tx = eth.get_transaction(h)
            except TransactionNotFound:
                return None
            except _THIRD_PARTY as exc:
                raise EvmError(self._msg("eth_getTransactionByHash failed", exc, h)) from exc
            sender = str(tx.get("from", ""))
            to = str(tx.get("to") or "")
            data = bytes(tx.get("input", b""))
            tx_chain = tx.get("chainId")
            chain_id = int(tx_chain) if tx_chain is not None else self.chain_id()
            if tx.get("blockNumber") is None:
                return EvmTx(chain_id, h, -1, "", sender, to, data, -1, 0)
            try:
                rcpt = eth.get_transaction_receipt(h)
            except TransactionNotFound:
                continue  # mined and dropped by a reorg between the two calls: look again
            except _THIRD_PARTY as exc:
                raise EvmError(self._msg("eth_getTransactionReceipt failed", exc, h)) from exc
            head = self.block_number()
            number = int(rcpt["blockNumber"])
            block_hash = _hex(rcpt["blockHash"])
            if _hex(tx["blockHash"]) != block_hash:
                continue  # reorg between the two calls
            status = int(rcpt.get("status", -1))
            confirmations = max(0, head - number + 1)
            return EvmTx(chain_id, h, number, block_hash, sender, to, data, status, confirmations)
        raise EvmError(self._msg("the transaction's block kept changing while reading it (reorg?)", None, h))

    def wait(self, tx_hash: str, confirmations: int, timeout_s: float) -> EvmTx:
        """Poll until the transaction is mined with ``confirmations`` blocks (its own block counts as 1).

        :class:`EvmRejected` if it was mined with a status other than 1; :class:`EvmError` if the node
        fails or ``timeout_s`` passes first (the message says whether it was unknown, pending or short of
        confirmations). A node error ends the wait at once; one poll may overrun ``timeout_s`` by up to
        the per-request timeout.
        """
        if confirmations < 1:
            raise ValueError(f"confirmations must be >= 1, got {confirmations}")
        h = _check_hash(tx_hash)
        deadline = time.monotonic() + timeout_s
        while True:
            tx = self.fetch(h)
            if tx is not None and tx.mined:
                if tx.status != 1:
                    raise EvmRejected(
                        self._msg(
                            f"transaction failed in block {tx.block_number} (status {tx.status})", None, h
                        )
                    )
                if tx.confirmations >= confirmations:
                    return tx
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if tx is None:
                    state = "unknown to the node"
                elif not tx.mined:
                    state = "still pending"
                else:
                    state = (
                        f"in block {tx.block_number} with {tx.confirmations}/{confirmations} confirmations"
                    )
                raise EvmError(self._msg(f"timed out after {timeout_s:g}s: {state}", None, h))
            time.sleep(min(self.poll_interval_s, remaining))

    # -- writes ---------------------------------------------------------------------------------------
    def sign(self, data: bytes) -> EvmSignedTx:
        """Build and sign a 0-value transaction carrying ``data``; nothing is broadcast.

        Nonce from the node's ``pending`` count, gas from ``eth_estimateGas``, EIP-1559 fees when the
        latest block has a base fee (max fee = 2 × base fee + tip), else a legacy ``gasPrice``.
        """
        if self._account is None or self.to_address is None:
            raise EvmRejected(self._msg("no private key configured: this client is read-only"))
        acct, to, data = self._account, self.to_address, bytes(data)
        chain_id = self._checked_chain_id()
        eth = self._w3.eth
        nonce = int(
            self._read(
                "eth_getTransactionCount failed", lambda: eth.get_transaction_count(acct.address, "pending")
            )
        )
        try:
            gas = int(eth.estimate_gas({"from": acct.address, "to": to, "value": Wei(0), "data": data}))
        except ContractLogicError as exc:
            raise EvmRejected(self._msg(f"eth_estimateGas: a 0-value tx to {to} reverts", exc)) from exc
        except Web3RPCError as exc:
            cls = EvmError if _is_transient(exc) else EvmRejected
            raise cls(self._msg(f"eth_estimateGas refused a 0-value tx to {to}", exc)) from exc
        except _THIRD_PARTY as exc:
            raise EvmError(self._msg("eth_estimateGas failed", exc)) from exc
        tx: dict[str, Any] = {
            "chainId": chain_id,
            "nonce": nonce,
            "to": to,
            "value": 0,
            "data": data,
            "gas": gas,
        }
        base_fee = self._read(
            "eth_getBlockByNumber failed", lambda: eth.get_block("latest").get("baseFeePerGas")
        )
        if base_fee is not None:
            tip = int(self._read("eth_maxPriorityFeePerGas failed", lambda: eth.max_priority_fee))
            tx.update(type=2, maxPriorityFeePerGas=tip, maxFeePerGas=2 * int(base_fee) + tip)
        else:
            tx["gasPrice"] = int(self._read("eth_gasPrice failed", lambda: eth.gas_price))
        signed = acct.sign_transaction(tx)
        return EvmSignedTx(
            tx_hash=_hex(signed.hash),
            raw=bytes(signed.raw_transaction),
            chain_id=chain_id,
            nonce=nonce,
            sender=acct.address,
            to=to,
            data=data,
        )

    def broadcast(self, signed: EvmSignedTx) -> str:
        """Send a signed transaction; idempotent when the node already knows it. Returns its hash."""
        h = signed.tx_hash
        if self.expected_chain_id is not None and signed.chain_id != self.expected_chain_id:
            raise EvmRejected(
                self._msg(f"signed for chain {signed.chain_id}, configured {self.expected_chain_id}", None, h)
            )
        try:
            got = self._w3.eth.send_raw_transaction(signed.raw)
        except Web3RPCError as exc:
            # "already known" / "nonce too low" for our own transaction: it is in the pool or mined.
            if self._known(h):
                return h
            cls = EvmError if _is_transient(exc) else EvmRejected
            raise cls(self._msg(f"eth_sendRawTransaction refused (nonce {signed.nonce})", exc, h)) from exc
        except _THIRD_PARTY as exc:
            # The node may or may not have it: the caller fetches the hash before sending again.
            raise EvmError(self._msg("eth_sendRawTransaction failed", exc, h)) from exc
        if _hex(got).lower() != h:
            raise EvmError(self._msg(f"the node answered with another hash {_hex(got)}", None, h))
        return h

    def send(self, data: bytes) -> str:
        """Sign and broadcast a 0-value transaction carrying ``data``; returns its 0x hash.

        Not idempotent by itself: see the module docstring for the retry protocol (record the hash,
        ``fetch`` it before sending again), or use :meth:`sign` + :meth:`broadcast`.
        """
        return self.broadcast(self.sign(data))

    def _known(self, tx_hash: str) -> bool:
        try:
            self._w3.eth.get_transaction(HexStr(tx_hash))
        except _THIRD_PARTY:  # TransactionNotFound included
            return False
        return True
