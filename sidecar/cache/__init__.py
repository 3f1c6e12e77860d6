"""The response cache: complete answers replayed for identical requests, and request coalescing."""
