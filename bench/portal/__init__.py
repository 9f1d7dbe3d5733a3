"""The harness of bench/portal.py: the processes it starts (database, Django children, gunicorn), the simulated
readers, the measurements, the report, and Label Studio run beside us."""
