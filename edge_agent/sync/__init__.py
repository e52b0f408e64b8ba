"""Sync with the controller: the durable outbox, its send window, the MQTT link."""
