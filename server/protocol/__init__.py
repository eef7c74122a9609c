"""Pydantic models of the OpenAI wire format. No I/O here."""
