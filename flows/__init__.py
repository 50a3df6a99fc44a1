"""Prefect flows: they wire the jobs together and add retries, logs and artifacts. Nothing else."""
