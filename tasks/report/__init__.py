"""The reports: a run's summary and a sweep's table, as files and Prefect artifacts, and their plots."""
