"""Codecs: series <-> value tokens (local LM) and series <-> chat text (OpenAI-style backends)."""
