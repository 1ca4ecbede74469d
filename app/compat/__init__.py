"""Dialect adapters: the routes other clients already speak (legacy, v1, Dubarr, VOXIS, OpenAI)."""
