"""The package version (ground floor)."""

__version__ = "0.1.0"
