"""One Claude call, shared by every Claude route kind: admission, the upstream call, the
relay (or the hand-off to a resumable generation), settlement and telemetry.

Route handlers parse and screen a request into a `ClaudeRequest`; `run.call_claude` does
the rest. Not a handler itself: it answers whatever route kind called it.
"""
