"""Operator tools over a stored pipeline: proofs, the audit, erasure, gaps, enrolment and broker
authentication (password file and ACL)."""
