"""Quotas: per-subject token buckets and stream leases in a memory or Redis store."""

from sidecar.quotas.gate import NO_LEASE, QuotaGate, QuotaLease, ratelimit_headers

__all__ = ["NO_LEASE", "QuotaGate", "QuotaLease", "ratelimit_headers"]
