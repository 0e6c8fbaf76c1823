"""Prefect deployments of the pruning flow: a nightly schedule and manual runs, on a GPU work pool."""
