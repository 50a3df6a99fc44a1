"""Run the train stage alone, in one process or data-parallel:

    python -m jobs.train CONFIG --store DIR [--model NAME] [--snapshot ID]
    torchrun --nproc-per-node 2 -m jobs.train CONFIG --store DIR [--model NAME] [--snapshot ID]

Trains one model of the config (``--model``; the only one by default) on a
snapshot (``--snapshot``; the dataset's latest by default). Under torchrun every
rank trains its share of each batch, rank 0 writes the run and prints the summary
(see jobs/train/distributed.py). ``mf`` and ``gru`` train data-parallel;
``skipgram`` runs in one process only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from jobs import stages
from jobs.common.files import read_json
from jobs.config import load_config
from jobs.train import distributed
from jobs.train.job import RESULT
from schemas.errors import LatentstoreError
from schemas.store import StoreLayout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs.train", description="Train one model on a snapshot.")
    parser.add_argument("config", help="pipeline config (TOML)")
    parser.add_argument("--store", default="latentstore-data", help="store root")
    parser.add_argument("--model", default=None, help="one of the config's models (default: its only model)")
    parser.add_argument("--snapshot", default=None, help="snapshot id (default: the dataset's latest)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start over instead of continuing from the last checkpoint")
    args = parser.parse_args(argv)
    world = distributed.launched_world_size()
    _logging(world)
    store = StoreLayout(args.store)
    summary = None
    try:
        cfg = load_config(args.config)
        summary = stages.train(cfg, store, model=args.model, snapshot_id=args.snapshot, resume=args.resume)
    except LatentstoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
    distributed.shutdown(wait=summary is not None)  # outside the except block: its traceback holds the model
    if summary is None:
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # (a reused run forms no process group)
        runtime = read_json(store.run_dir(summary["run_id"]) / RESULT)["runtime"]
        summary = {k: v for k, v in summary.items() if k != "history"}
        print(json.dumps({**summary, "world_size": runtime.get("world_size", 1), "backend": runtime.get("backend"),
                          "path": str(store.run_dir(summary["run_id"]))}, indent=2, default=str))
    return 0


def _logging(world: int) -> None:
    """Rank 0 logs progress; the other ranks only warnings, tagged with their rank."""
    rank = int(os.environ.get("RANK", "0"))
    tag = f" [rank {rank}]" if world > 1 else ""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s{tag} %(name)s - %(message)s")


if __name__ == "__main__":
    sys.exit(main())
