"""``latentstore serve``: one process that schedules and runs the pipeline, for people without a work pool.

Every CONFIG becomes a deployment served by this process (``prefect.serve``), with
the same guarantees as the work-pool deployments in infra/prefect.yaml: one run
at a time per deployment (a new one is cancelled while one runs), late runs
skipped, and the index stage in a child process per run (a fresh Spark session per run even where
runs share a process, which would otherwise keep the first run's Spark settings).
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.pipeline import pipeline
from jobs.config import load_config
from jobs.policy import ALL_STAGES, check_stages


def served_deployments(configs: list[Path], store: Path, cron: str | None = None, stages: list[str] | None = None,
                       max_lateness_minutes: float | None = None, suffix: str = "served"):
    """A runner deployment per config: ``<config name>-<suffix>``, scheduled by ``cron`` when given."""
    selected = check_stages(stages or list(ALL_STAGES))
    deployments = []
    for config in configs:
        cfg = load_config(config)  # fails now, not at the first scheduled run
        deployments.append(pipeline.to_deployment(
            name=f"{cfg.name.replace('_', '-')}-{suffix}",
            cron=cron,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            parameters={"config_path": str(Path(config).resolve()), "store": str(Path(store).resolve()),
                        "stages": selected, "max_lateness_minutes": max_lateness_minutes, "isolate_index": True},
            description=f"{', '.join(selected)} of {cfg.name} into {Path(store).resolve()}",
            tags=["latentstore", cfg.name],
        ))
    return deployments


def serve(deployments) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*deployments)
