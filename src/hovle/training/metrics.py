"""The per-step training metrics: ``metrics.jsonl`` and TensorBoard scalars."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import STAGES

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """``metrics.jsonl`` (one object per optimizer step, every stage) and TensorBoard scalars."""

    def __init__(self, path: Path, stage: str, resume_step: int, tensorboard_dir: Path | None, enabled: bool):
        self.path = path
        self.stage = stage
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError(
                    "TensorBoard logging needs the tensorboard package: pip install 'hovle[train]'"
                ) from None
            self.writer = SummaryWriter(str(tensorboard_dir / stage), purge_step=resume_step + 1)

    def _truncate(self, resume_step: int) -> None:
        """Drop records a killed run wrote after the checkpoint it resumes from."""
        if not self.path.exists():
            return
        later = set(STAGES[STAGES.index(self.stage) + 1:]) if self.stage in STAGES else set()
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("stage") in later or (record.get("stage") == self.stage and record.get("step", 0) > resume_step):
                continue
            kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step",):
                    self.writer.add_scalar(f"{self.stage}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | os.PathLike | None) -> list[dict]:
    """The records of a run folder's ``metrics.jsonl``, oldest first ([] without one)."""
    return read_metrics_file(Path(run_dir) / METRICS_FILE) if run_dir else []


def read_metrics_file(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file, oldest first ([] without one)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted run
    return records
