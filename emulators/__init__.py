"""Loopback emulators of cloud services, for tests and demos; never imported by ``src/mlrelease``."""
