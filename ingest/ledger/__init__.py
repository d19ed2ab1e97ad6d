"""Ledgers that anchor batch Merkle roots: ``base`` (the Protocol, receipts, errors, a memory
ledger), ``local`` (the signed Merkle log), ``evm`` (anchors on an EVM chain, over ``evm_client``)."""
