"""OpenTelemetry traces and metrics, Prometheus exposition and structured logs."""

from sidecar.telemetry.core import Telemetry
from sidecar.telemetry.logs import JsonFormatter, setup_logging

__all__ = ["JsonFormatter", "Telemetry", "setup_logging"]
