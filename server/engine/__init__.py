"""Engines: the interface, generation and its worker, and one package per backend."""
