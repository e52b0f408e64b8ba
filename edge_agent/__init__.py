"""The edgefleet agent that runs on a device: local inference, controller link, local API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
