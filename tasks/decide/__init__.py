"""The nightly decision: the gate, champion against challenger, promotion, the registry, the history and its event."""
