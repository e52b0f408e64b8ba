"""The edgefleet controller: fleet registry, ingest, console and operator CLI."""

__version__ = "0.1.0"

__all__ = ["__version__"]
