"""Observability: the agent's own counters and histograms and the GetMetrics snapshot
(metrics.py, the compiled _metrics), the Prometheus exposition over HTTP or a textfile
(exposition.py) and the MQTT heartbeat (heartbeat.py). It may import platform, and the
shared transport.socket_files for the socket file the exposition serves on; the service and
the fronts record into it, it knows neither.
"""
