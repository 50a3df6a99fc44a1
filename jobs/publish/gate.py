"""The quality gate: may a new version become current? A pure decision over registry records.

- The new version is compared with the current one only when both were validated on the same
  validation set (the same snapshot content: input, data config and split) with the same metric:
  then it is refused when worse by more than ``tolerance`` x |current value|.
- A fold-in (jobs.train.fold_in) of the current version was validated on its own snapshot, and so was
  the current version's run, re-scored there before the fold-in trained: the same tolerance rule then
  compares the two on that validation set.
- Otherwise (the first publish, a new snapshot, another metric) the model's absolute floor applies,
  if one is configured; with none, the version passes.
- Each metric has a direction (minimize: RMSE; maximize: HR@10): "worse" follows it.

A refusal is recorded as a ``refused`` event and raises; ``--force`` publishes anyway and the
version record says it was forced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from jobs.publish.config import GateConfig
from schemas.store import version_name


@dataclass(frozen=True)
class Decision:
    passed: bool
    rule: str  # "tolerance" | "floor" | "no floor" | "disabled"
    reason: str
    metric: str
    value: float | None
    compared_to: int | None = None  # the current version compared against (rule "tolerance")
    limit: float | None = None  # the worst value that would have passed

    def record(self, forced: bool = False) -> dict:
        return {**asdict(self), "forced": forced and not self.passed}


def _worse(direction: str, value: float, than: float) -> float:
    """How much worse ``value`` is than ``than`` (negative: better)."""
    return value - than if direction == "minimize" else than - value


def _known(value) -> bool:
    return value is not None and math.isfinite(value)


def decide(cfg: GateConfig, model: str, metric: dict, validation_set: str, current: dict | None,
           fold_in: dict | None = None) -> Decision:
    """``metric``: {"name", "value", "direction"} of the new version; ``current``: the current version's record;
    ``fold_in``: the new run's fold-in record (its parent run and the parent's metric on this validation set).

    A missing or non-finite value (no validation data, or a NaN) is unknown: it never passes a
    comparison with a validated current version, nor a floor."""
    name, value, direction = metric["name"], metric["value"], metric["direction"]
    if not cfg.enabled:
        return Decision(True, "disabled", "the gate is disabled (publish.gate.enabled = false)", name, value)
    if (current is not None and fold_in and fold_in.get("parent_run") == current.get("run_id")
            and current.get("metric_name") == name and _known(fold_in.get("parent_metric"))):
        # the current version re-scored on the fold-in's own validation set: compared as on the same one
        current = {**current, "metric_value": fold_in["parent_metric"], "validation_set": validation_set}
    comparable = (current is not None and current.get("validation_set") == validation_set
                  and current.get("metric_name") == name and _known(current.get("metric_value")))
    if comparable and not _known(value):
        return Decision(False, "tolerance", f"{name} of the new version is unknown ({value}); the current "
                        f"{model} {version_name(current['version'])} has {current['metric_value']:.6g} on the same "
                        "validation set", name, value, current["version"])
    if comparable:
        reference = current["metric_value"]
        allowed = cfg.tolerance * abs(reference)
        limit = reference + allowed if direction == "minimize" else reference - allowed
        worse = _worse(direction, value, reference)
        where = f"{name} {value:.6g} vs {reference:.6g} of current {model} {version_name(current['version'])}"
        if worse > allowed:
            return Decision(False, "tolerance", f"{where}: worse by {worse:.6g}, more than the tolerance "
                            f"{cfg.tolerance:g} x {abs(reference):.6g} = {allowed:.6g} (same validation set)",
                            name, value, current["version"], limit)
        return Decision(True, "tolerance", f"{where}: within the tolerance (same validation set)", name, value,
                        current["version"], limit)
    floor = cfg.floors.get(model)
    why = "first publish" if current is None else "no comparable current version (another validation set)"
    if floor is None:
        return Decision(True, "no floor", f"{why}; no floor set for {model} (publish.gate.floors)", name, value)
    if not _known(value):
        return Decision(False, "floor", f"{why}; {name} is unknown ({value}), floor {floor:g}",
                        name, value, limit=floor)
    if _worse(direction, value, floor) > 0:
        return Decision(False, "floor", f"{why}; {name} {value:.6g} is worse than the floor {floor:g} "
                        f"({direction})", name, value, limit=floor)
    return Decision(True, "floor", f"{why}; {name} {value:.6g} meets the floor {floor:g}", name, value, limit=floor)
