"""Champion against challenger: the promoted file (the champion), evaluated in this run on this
run's test split and timed on this machine, and whether the gate's choice (the challenger)
replaces it.

As TFX's Evaluator blesses a model only against the one serving: the challenger must pass the
absolute gate against the baseline (pruneflow.tasks.decide.gate), lose no more accuracy against the champion
than the sweep's thresholds allow (in points, and as a share of the champion's accuracy), and
be smaller (by at least the thresholds, in bytes and as a share) or faster (by at least a share).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.decide.gate import EPSILON, Candidate
from pruneflow.tasks.libs.artifacts import Champion, ChampionEvaluation
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.specs.config import SweepConfig
from pruneflow.tasks.specs.formats import FORMATS, KERAS


def current_champion(layout: OutputLayout) -> Champion | None:
    """The file `promoted` points to now (its metrics.json names it: model.tflite, model.h5...); None
    before the first promotion, or when what it points to is gone (removed by hand): the
    challenger then has nothing to beat, and the log says why."""
    if not layout.promoted.is_symlink():
        return None
    version = layout.promoted.resolve()
    try:
        metrics = json.loads((version / "metrics.json").read_text())
        # A version promoted before TFLite files were made holds its Keras model only.
        path, fmt = version / metrics.get("file", FORMATS[KERAS].promoted_file), metrics.get("format", KERAS)
        return Champion(file=ModelFile.of(path, trust_code=True), format=fmt, version=version.name)
    except (OSError, ValueError) as error:
        run_logger().warning("No champion to measure: %s cannot be read (%s)", layout.promoted, error)
        return None


def promoted_by(layout: OutputLayout) -> str | None:
    """The flow run that promoted what `promoted` points to now (its metrics.json says), or None."""
    if not layout.promoted.is_symlink():
        return None
    try:
        return json.loads((layout.promoted.resolve() / "metrics.json").read_text()).get("flow_run_id")
    except (OSError, ValueError):
        return None


KEPT = "kept the champion"


class Decision(BaseModel):
    """Whether the challenger is promoted, and why."""

    model_config = ConfigDict(frozen=True)

    promote: bool
    reasons: list[str]
    why: str = ""  # the reasons in a few words, as `pruneflow history` shows them
    champion: ChampionEvaluation | None = None
    superseded_by: str | None = None  # the version another run promoted while this one decided
    earlier_attempt: bool = False  # promoted by an earlier attempt of this flow run, which then died

    @classmethod
    def promoted_earlier(cls) -> Decision:
        """An earlier attempt of this flow run promoted its file and then died (its worker, the
        server): the same file, not promoted twice, nor measured against itself."""
        return cls(promote=True, earlier_attempt=True, why="by an earlier, interrupted attempt of this run", reasons=[
            "promoted by an earlier attempt of this flow run, which was interrupted: not promoted again"
        ])

    @classmethod
    def incomplete(cls, failed: int, targets: int) -> Decision:
        """Targets failed: the smallest file within the gate may be a failed target's, so nothing
        is promoted (the champion stays) until a sweep completes."""
        why = f"{failed} of {targets} targets failed"
        return cls(promote=False, why=why, reasons=[
            f"{why}: the smallest file within the gate may be a failed target's; nothing is promoted until a sweep completes"
        ])

    def superseded(self, current: str) -> Decision:
        """This decision once another run promoted `current` while this one was deciding: the
        challenger was measured against another champion, so it is not promoted."""
        why = (
            f"another run promoted {current} meanwhile, replacing the champion this challenger was measured "
            "against: kept it; the next sweep measures the challenger against it" if current else
            "the champion this challenger was measured against is no longer promoted (its link was removed "
            "meanwhile): nothing promoted; the next sweep measures the challenger afresh"
        )
        short = f"another run promoted {current} meanwhile" if current else "its champion was unpromoted meanwhile"
        return self.model_copy(
            update={"promote": False, "superseded_by": current, "reasons": [*self.reasons, why], "why": short}
        )

    @property
    def verdict(self) -> str:
        if self.superseded_by is not None:
            return KEPT
        if self.promote:
            return "promoted" if self.champion is not None or self.earlier_attempt else "promoted (no champion yet)"
        return KEPT if self.champion is not None else "nothing to promote"


def challenge(chosen: Candidate | None, champion: ChampionEvaluation | None, gate: SweepConfig) -> Decision:
    """Promote the challenger (the gate's choice) only if it holds its accuracy against the
    champion and is smaller or faster; with no champion, the gate's choice is promoted."""
    if chosen is None:
        return Decision(promote=False, reasons=["no file passed the gate"], why="no file passed the gate", champion=champion)
    _, file = chosen
    if champion is None:
        return Decision(promote=True, reasons=["no champion yet: the gate's choice is promoted"], why="the gate's choice")
    reasons, lost = [], 100.0 * (champion.accuracy - file.accuracy)
    held = lost <= gate.champion_max_accuracy_loss + EPSILON and (
        lost <= 100.0 * gate.champion_max_relative_accuracy_loss * champion.accuracy + EPSILON
    )
    reasons.append(
        f"accuracy {file.accuracy:.4f} against the champion's {champion.accuracy:.4f} ({-lost:+.2f} points; "
        f"at most {gate.champion_max_accuracy_loss:g} points and {gate.champion_max_relative_accuracy_loss:.1%} lost "
        f"allowed): {'held' if held else 'lost too much'}"
    )
    saved = champion.zip_bytes - file.zip_bytes
    smaller = saved > gate.champion_min_size_gain_bytes and saved > gate.champion_min_size_gain * champion.zip_bytes
    reasons.append(
        f"{file.zip_bytes:,} B zip-deflated against {champion.zip_bytes:,} B ({saved / champion.zip_bytes:+.1%} saved; "
        f"more than {gate.champion_min_size_gain_bytes:,} B and {gate.champion_min_size_gain:.1%} needed): "
        f"{'smaller' if smaller else 'not smaller'}"
    )
    faster = None  # not compared: timed on another kind of machine
    if champion.machine and champion.machine == chosen[0].latency.machine:
        gain = 1.0 - file.latency_median_ms / champion.latency_ms
        faster = gain > gate.champion_min_speedup
        reasons.append(
            f"{file.latency_median_ms:.3f} ms against {champion.latency_ms:.3f} ms ({gain:+.1%}; more than "
            f"{gate.champion_min_speedup:.0%} needed): {'faster' if faster else 'not faster'}"
        )
    promote = held and (smaller or bool(faster))
    if promote:
        why = ", ".join(["held its accuracy", *(["smaller"] if smaller else []), *(["faster"] if faster else [])])
    else:
        why = "lost too much accuracy" if not held else "not smaller" + (", not faster" if faster is False else "")
    return Decision(promote=promote, reasons=reasons, why=why, champion=champion)
