"""OpenTelemetry traces and metrics, Prometheus exposition and structured logs."""

from sidecar.telemetry.core import Telemetry
from sidecar.telemetry.log_format import JsonFormatter
from sidecar.telemetry.logs import setup_logging

__all__ = ["JsonFormatter", "Telemetry", "setup_logging"]
