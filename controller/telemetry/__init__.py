"""Fleet telemetry on the controller: hourly rollups of the agents' windowed records,
drift scores against reference windows, alerts, and the queries the console reads."""
