"""What every stage's library `run` returns: its metrics and the files worth browsing."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """Metrics (logged to MLflow by the stage) and written files to log as artifacts ((file, folder) pairs)."""

    metrics: dict = field(default_factory=dict)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)

    def numeric(self) -> dict:
        """The metrics that are numbers (what MLflow takes); nested dicts are kept for flattening."""
        return {k: v for k, v in self.metrics.items()
                if isinstance(v, dict) or (isinstance(v, (int, float)) and not isinstance(v, bool))}
