"""MQTT brokers the controller can start itself (the zero-setup default)."""

from controller.broker.embedded import EmbeddedBroker, free_port

__all__ = ["EmbeddedBroker", "free_port"]
