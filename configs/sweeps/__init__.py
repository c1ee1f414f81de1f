"""Sweeps: Python files whose `runs()` lists training runs as a config file and its overrides."""
