"""The ingest path: what devices publish, from the broker to the database.

``subscriber`` is the shell (the MQTT subscription, the supervised writer and dead-letter
workers); ``apply`` classifies messages and applies batches to the registry in one
transaction; ``telemetry_store`` stores outbox records exactly once (in telemetry's
table); ``limits`` (pure) aggregates and rate-limits refusals, ``dead_letters`` writes and
caps them; ``tables`` holds the dead-letter table. Imports nothing: import the module you
need.
"""
