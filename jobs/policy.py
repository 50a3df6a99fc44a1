"""The pipeline's decisions around its stages, as plain functions: the flow applies them, a test calls them.

Which stages a run selects, which errors are worth a retry, when a run is too
late to be worth running, when the hourly publish does not ask the quality gate
again, how a failure names its stage, how the failures of several models become
one, and what to do with a train deployment's flow run that did not finish.
flows/pipeline.py only wires these to Prefect (tasks, states, the run logger),
so each is tested here without a Prefect server (tests/flows/test_stages.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from schemas.errors import ConfigError, LatentstoreError, StageFailed
from schemas.store import StoreLayout

Stage = Literal["index", "train", "publish"]
ALL_STAGES: list[Stage] = ["index", "train", "publish"]

T = TypeVar("T")


def check_stages(selected: list[str] | None) -> list[str]:
    """The stages to run, in pipeline order (all of them when None); ConfigError for an empty or unknown choice."""
    if selected is None:
        return list(ALL_STAGES)
    unknown = sorted(set(selected) - set(ALL_STAGES))
    if unknown or not selected:
        raise ConfigError(f"stages must be a non-empty subset of {ALL_STAGES}, got {selected}")
    return [s for s in ALL_STAGES if s in selected]


def is_transient(error: object) -> bool:
    """Retry only I/O errors that are not the user's input or config: those would fail again the same way."""
    return isinstance(error, OSError) and not isinstance(error, LatentstoreError)


def late_reason(scheduled: datetime, max_lateness_minutes: float | None, now: datetime | None = None) -> str | None:
    """Why a run scheduled at ``scheduled`` is too late to be worth running now, or None (it runs)."""
    if max_lateness_minutes is None:
        return None
    late_by = ((now or datetime.now(UTC)) - scheduled).total_seconds() / 60
    if late_by <= max_lateness_minutes:
        return None
    return (f"skipped: started {late_by:.1f} min after its scheduled time {scheduled.isoformat(timespec='seconds')}, "
            f"more than max_lateness_minutes={max_lateness_minutes:g}; the next scheduled run will do the work")


def refused_before(store: StoreLayout, model: str, run_id: str) -> bool:
    """The quality gate already refused this run against the model's current version."""
    from jobs.store.registry import current_version, events

    if not store.root.is_dir():
        return False
    current = current_version(store, model)
    return any(e["event"] == "refused" and e.get("run_id") == run_id and e.get("from_version") == current
               for e in events(store, model))


def publish_skipped(store: StoreLayout, model: str, run_id: str, selected: list[str], force: bool) -> str | None:
    """Why the publish of ``run_id`` is not attempted, or None. The hourly refresh (only the publish stage) would
    ask the gate the same question every hour and fail every hour, so a run the gate refused against the current
    version is not asked again; ``force`` publishes it."""
    if selected != ["publish"] or force or not refused_before(store, model, run_id):
        return None
    return (f"{model}: the quality gate already refused run {run_id} against the current version; not asked "
            "again (force=true publishes it)")


def stage_failure(stage: str, label: str, error: object) -> StageFailed:
    """The error a failed stage raises: the stage, the model or config, and the cause (the user's own error
    by its message alone; anything else with its type)."""
    reason = str(error) if isinstance(error, LatentstoreError) else f"{type(error).__name__}: {error}"
    return StageFailed(f"{stage} stage of {label} failed: {reason}")


def in_stage(label: str, stage: str, call: Callable[[], T]) -> T:
    """``call()``, whose LatentstoreError fails as ``stage`` of ``label`` (work done around a stage's task: its
    marker, reading a snapshot)."""
    try:
        return call()
    except LatentstoreError as error:
        raise stage_failure(stage, label, error) from error


def combined_failure(failures: list[StageFailed]) -> StageFailed | None:
    """One error for the models whose stages failed while the config's other models went on: the failure itself
    when there is one, else one naming them all; None when none failed."""
    if not failures:
        return None
    return failures[0] if len(failures) == 1 else StageFailed("; ".join(str(f) for f in failures))


@dataclass(frozen=True)
class RemoteTrain:
    """What to do once the wait for a train deployment's flow run is over."""

    cancel: bool
    """The run is still scheduled or running (no worker on its pool, a queue ahead of it): cancel it rather than
    hold the deployment's slot forever."""
    failure: StageFailed | None
    """Raise this; None when the run completed."""


def remote_train_outcome(deployment: str, run_name: str, state, timeout_minutes: float) -> RemoteTrain:
    """Judge the final wait on ``deployment``'s flow run ``run_name``; ``state`` is its state (anything with
    ``is_completed()``, ``is_final()``, ``name`` and ``message``) or None if it has none yet."""
    if state is not None and state.is_completed():
        return RemoteTrain(cancel=False, failure=None)
    if state is None or not state.is_final():
        return RemoteTrain(cancel=True, failure=StageFailed(
            f"train stage failed: deployment {deployment} did not finish flow run {run_name} within "
            f"train_timeout_minutes={timeout_minutes:g} (is a worker running on its pool?); cancelled it"))
    return RemoteTrain(cancel=False, failure=StageFailed(
        f"train stage failed on deployment {deployment}: flow run {run_name} ended {state.name}: {state.message}"))
