"""check_inputs, before any stage: every cheap check of a run's inputs, and path confinement."""
