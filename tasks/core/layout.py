"""Where a run's outputs live under output_root: declared here, and nowhere else.

    OUTPUT_ROOT/
      artifacts/<stage>/<key>/         each stage's output (see pruneflow.tasks.core.store), and
      artifacts/.file-digests.sqlite   the image digests check_inputs remembers
      artifacts/.checked/<key>.json    what its stage checks concluded about inputs they checked
      runs/<UTC time>-<flow run>/      one folder per run: summary.json, or a sweep's report
      promoted -> promoted-versions/<version>/   the model a sweep promoted (a symlink)
      .promotion.json                            a promotion under way (pruneflow.tasks.decide.promote)
      history/<time>-<flow run>.parquet          one file per sweep
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.files import storage_errors
from pruneflow.tasks.core.store import ArtifactStore


class OutputLayout(BaseModel):
    model_config = ConfigDict(frozen=True)

    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(root=self.artifacts)

    @property
    def digest_cache(self) -> Path:
        return self.artifacts / ".file-digests.sqlite"

    @property
    def checked(self) -> Path:
        """What check_inputs concluded about inputs it checked (pruneflow.tasks.preflight.check_inputs), one file per inputs."""
        return self.artifacts / ".checked"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def promoted(self) -> Path:
        """A symlink to the promoted version's folder, switched atomically (see pruneflow.tasks.decide.promote)."""
        return self.root / "promoted"

    @property
    def promoted_versions(self) -> Path:
        return self.root / "promoted-versions"

    @property
    def promotion_lock(self) -> Path:
        return self.root / ".promoted.lock"

    @property
    def promotion_journal(self) -> Path:
        return self.root / ".promotion.json"

    @property
    def history(self) -> Path:
        return self.root / "history"

    def new_run_dir(self, run_name: str | None) -> Path:
        """A fresh folder for one run's report: UTC time, then the flow run's name (then -2, -3 for
        a flow run run again within the same second: a retry, or a rerun served from the store)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        with storage_errors(self.root, "the run's folder"):
            self.runs.mkdir(parents=True, exist_ok=True)
            for attempt in range(1, 1000):
                run_dir = self.runs / f"{stamp}-{run_name or 'local'}{'' if attempt == 1 else f'-{attempt}'}"
                try:
                    run_dir.mkdir()
                    return run_dir
                except FileExistsError:
                    continue
        raise AssertionError(f"{self.runs}: 999 runs named {run_name} in one second")
