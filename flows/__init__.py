"""Prefect flows that compose the stage tasks, and the ``bertflow`` CLI."""
