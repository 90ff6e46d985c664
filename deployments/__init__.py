"""Prefect deployments (schedules) for bertflow."""
