"""Request policy: authentication, CORS, prompt screening, identity headers."""

from sidecar.policy.auth import AuthService
from sidecar.policy.cors import CorsPolicy
from sidecar.policy.identity_headers import strip_and_set_identity
from sidecar.policy.screening import Screener, collect_texts

__all__ = ["AuthService", "CorsPolicy", "Screener", "collect_texts", "strip_and_set_identity"]
