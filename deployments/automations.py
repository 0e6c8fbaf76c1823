"""pruneflow's Prefect automations, kept in step with the code: one family per name prefix.

`sync_automations` makes the server's automations whose names start with a prefix exactly the
ones wanted: created, updated where they differ, left alone where they are as wanted (so that
re-applying does not restart a proactive trigger's window), and copies or automations no
longer wanted deleted. pruneflow.deployments.alerts and pruneflow.deployments.recovery each own one prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from uuid import UUID


def describe(window: timedelta) -> str:
    """`window` in the largest whole unit: "26 hours", "90 minutes", "12 seconds"."""
    seconds = int(window.total_seconds())
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"


def sync_automations(prefix: str, wanted: Iterable) -> dict[str, UUID]:
    """Make the automations named `prefix...` on the current Prefect API exactly `wanted`
    (AutomationCore, each named with the prefix); their ids by name."""
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    wanted = {automation.name: automation for automation in wanted}
    if any(not name.startswith(prefix) for name in wanted):
        raise ValueError(f"every automation synced under {prefix!r} must be named with it: {sorted(wanted)}")
    ids = {}
    with get_client(sync_client=True) as client:
        for existing in client.read_automations():
            if not existing.name.startswith(prefix):
                continue
            automation = wanted.get(existing.name)
            if automation is None or existing.name in ids:
                client.delete_automation(existing.id)
                continue
            ids[existing.name] = existing.id
            # Compared as models: their sets (`expect`) dump in an arbitrary order.
            if AutomationCore(**existing.model_dump()) != automation:
                client.update_automation(existing.id, automation)
        for name, automation in wanted.items():
            if name not in ids:
                ids[name] = client.create_automation(automation)
    return ids
