"""The job in Prefect's UI, through Prefect's artifact API: a progress artifact (rounds
done of the budget), a table of rounds re-published as each round finishes, and a
markdown artifact with the result and the MLflow run link.

Artifacts are a view: a failure to publish one is logged once and never fails the job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(job_name: str, what: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-") or "job"
    return f"{slug}-{what}"


class PrefectBoard:
    def __init__(self, job_name: str, log: Callable[[str], None] = print) -> None:
        self.job_name = job_name
        self.log = log
        self._warned = False
        self.progress_id: UUID | None = self._try(
            create_progress_artifact,
            progress=0.0,
            key=artifact_key(job_name, "progress"),
            description=f"{job_name}: share of the search budget spent",
        )

    def _try(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # the UI is a view; the job goes on without it
            if not self._warned:
                self.log(f"warning: Prefect artifact not published: {err}")
                self._warned = True
            return None

    def rounds(self, rows: list[dict[str, Any]], fraction: float, done: int) -> None:
        """Re-publish the table of rounds (a new version under the same key) and progress."""
        self._try(
            create_table_artifact,
            table=rows,
            key=artifact_key(self.job_name, "rounds"),
            description=f"{self.job_name}: {done} rounds so far",
        )
        if self.progress_id is not None:
            self._try(update_progress_artifact, self.progress_id, progress=100.0 * fraction)

    def result(self, markdown: str) -> None:
        if self.progress_id is not None:
            self._try(update_progress_artifact, self.progress_id, progress=100.0)
        self._try(
            create_markdown_artifact,
            markdown=markdown,
            key=artifact_key(self.job_name, "result"),
            description=f"{self.job_name}: result",
        )
