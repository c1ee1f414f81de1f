"""Run configurations: one `get_config()` file per model variant, built on `configs/base.py`."""
