"""Typed configuration: a frozen pydantic model for every section of the YAML file.

Loading (YAML, `${VAR}` interpolation, collecting every problem, route overrides merged
onto their sections) lives in `sidecar.loader`; behaviour lives in the modules that
consume a section. The models check values at load so that a config that validates
also works: host:port pairs, header names, URLs (Redis ones as redis-py parses them),
RE2 patterns and JWT key files (read, and matched to the algorithms) fail `sidecar
check`, not the first request. Every model forbids unknown keys, so a typo is an
error, never a silent default.
"""

from sidecar.config.auth import ApiKeyConfig, AuthConfig, JWTConfig
from sidecar.config.browser import BrowserConfig, UiConfig
from sidecar.config.claude import ClaudeConfig, FakeClaudeConfig, QueueConfig
from sidecar.config.fields import (
    HeaderName,
    HostPort,
    HttpUrl,
    Network,
    Seconds,
    Section,
    redact_url,
    split_host_port,
)
from sidecar.config.policy import (
    CorsConfig,
    DenyRule,
    Pattern,
    QuotaConfig,
    ScreeningConfig,
    compile_re2,
    compile_re2_set,
    re2_options,
)
from sidecar.config.root import Config
from sidecar.config.routes import Handler, ResumeOverride, RouteConfig, override_model
from sidecar.config.server import AppConfig, IdentityHeaders, ServerConfig, TLSConfig
from sidecar.config.streams import CacheConfig, ResumeConfig
from sidecar.config.telemetry import ModelPrice, TelemetryConfig

__all__ = [
    "ApiKeyConfig",
    "AppConfig",
    "AuthConfig",
    "BrowserConfig",
    "CacheConfig",
    "ClaudeConfig",
    "Config",
    "CorsConfig",
    "DenyRule",
    "FakeClaudeConfig",
    "Handler",
    "HeaderName",
    "HostPort",
    "HttpUrl",
    "IdentityHeaders",
    "JWTConfig",
    "ModelPrice",
    "Network",
    "Pattern",
    "QueueConfig",
    "QuotaConfig",
    "ResumeConfig",
    "ResumeOverride",
    "RouteConfig",
    "ScreeningConfig",
    "Seconds",
    "Section",
    "ServerConfig",
    "TLSConfig",
    "TelemetryConfig",
    "UiConfig",
    "compile_re2",
    "compile_re2_set",
    "override_model",
    "re2_options",
    "redact_url",
    "split_host_port",
]
