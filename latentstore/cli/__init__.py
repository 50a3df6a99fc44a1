"""The `latentstore` command: run the pipeline, query the store, manage its versions."""

from latentstore.cli import pipeline, query, store  # noqa: F401  (each module registers its commands)
from latentstore.cli.common import app

__all__ = ["app"]
