"""Tests of orchestration: stages, Prefect flows and deployments, signals."""
