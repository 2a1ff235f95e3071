"""Tests of the loopback emulators under ``emulators/`` (imported from the repository root)."""
