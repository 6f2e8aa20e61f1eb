"""Training configs: one `get_config()` per dataset, sharing `configs/base.py`."""
