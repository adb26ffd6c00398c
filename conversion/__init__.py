"""Converters from public checkpoint formats to Florence model folders (run each file as a script)."""
