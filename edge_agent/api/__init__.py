"""The agent's local OpenAI-compatible HTTP API: one module per resource, built by ``app``."""
