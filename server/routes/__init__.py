"""Thin Starlette endpoints: parse, call a service, respond."""
