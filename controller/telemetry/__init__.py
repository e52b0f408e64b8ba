"""Fleet telemetry on the controller: hourly rollups of the agents' windowed records,
drift scores against reference windows, alerts, and the queries the console reads.

``fold`` and ``scoring`` are pure; ``rollup`` (the job), ``drift`` (references, scores,
alerts) and ``queries`` talk to the database (``/metrics`` is ``controller/metrics.py``);
``tables`` holds the schema and ``settings`` the ``telemetry:`` configuration. Nothing is
imported here, so ``controller.settings`` can load ``settings`` without the rest
(docs/telemetry.md).
"""

__all__: list[str] = []
