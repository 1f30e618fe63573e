"""Shipped device profiles (YAML). Data only: the schema lives in :mod:`edgeattn.device_profile`."""
