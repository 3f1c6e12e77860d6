"""Quotas: per-subject token buckets and stream leases in a memory or Redis store."""

from sidecar.quotas.decisions import ratelimit_headers
from sidecar.quotas.gate import NO_LEASE, QuotaGate, QuotaLease

__all__ = ["NO_LEASE", "QuotaGate", "QuotaLease", "ratelimit_headers"]
