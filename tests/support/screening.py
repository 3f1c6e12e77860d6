"""What the prompt screening tests share: the routes' model and path, a deny rule by name and
words it refuses."""

from __future__ import annotations

from typing import Any, Final

PROMPT: Final = "/api/stream-response"
MODEL: Final = "claude-sonnet-5-5"
SECRET_WORDS: Final = "the launch codes are 0000"  # refused by LAUNCH_CODES
LAUNCH_CODES: Final[dict[str, Any]] = {"name": "launch-codes", "pattern": "(?i)launch codes"}
