"""Prefect tasks, one per stage, and the plain functions that do their work."""
