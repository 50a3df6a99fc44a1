"""Run the index stage alone: ``python -m jobs.index CONFIG --store DIR``.

Also the ``spark-submit`` entry point (the package must be importable on the
driver, e.g. installed in the Python that PYSPARK_PYTHON names):

    spark-submit --master spark://host:7077 jobs/index/__main__.py CONFIG --store DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.config import load_config
from jobs.index.job import run
from jobs.stages import EXIT_BAD_INPUT, EXIT_IO_ERROR, resolve_input
from schemas.errors import LatentstoreError
from schemas.store import StoreLayout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs.index", description="Index raw ratings into a snapshot.")
    parser.add_argument("config", help="pipeline config (TOML)")
    parser.add_argument("--store", default="latentstore-data", help="store root")
    parser.add_argument("--input", default=None, help="read this path instead of the config's input")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s - %(message)s")
    try:
        cfg = load_config(args.config, args.input)
        store = StoreLayout(args.store)
        result = run(resolve_input(cfg.index, store), store)
    except LatentstoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # transient storage trouble: the caller may retry
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_IO_ERROR
    print(json.dumps({"snapshot_id": result.snapshot_id, "path": str(result.path), "reused": result.reused,
                      "counts": result.manifest.counts.model_dump()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
