"""The typed inputs: the run config and the parts of it each stage takes, and the deployable formats."""
