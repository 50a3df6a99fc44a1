"""The train stage on a GPU against the same runs on CPU: throughput, quality, share of the memory bound.

    python benchmarks/gpu.py [--quick] [--device cuda] [--cpu-reference]

Runs on any CUDA machine with torch, numpy, pyarrow and pydantic (no Java, Spark,
DuckDB or Prefect): the snapshots are written straight from the synthetic
generators (``jobs.synthetic.snapshot``, the snapshot format the train stage
reads) into a temporary folder.

- mf: 25M ratings shaped like MovieLens 25M (``--quick``: 1M), dim 64, the
  defaults (auto batch and learning rate, implicit feedback), 10 epochs;
- skipgram and gru: a synthetic event log (about 5M events; ``--quick``: 250k),
  their config defaults but 3 epochs.

Per family: throughput (from the run's own history: ratings, words or events per
second of training), the validation metric, and, on CUDA, the same run on CPU
for quality (``--cpu-reference``; mf on CPU is slow at 25M, so its reference
uses the 1M set and is marked so). ``bandwidth_share``: the bytes a step must
move at least (estimated per row as stated in ``BYTES``) times the rate, over
the device's peak memory bandwidth (``--peak-gbs``, 4800 for an H200).

Writes benchmarks/results/gpu.json (``--quick``: gpu-quick.json), naming the device.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from jobs.synthetic.config import SyntheticEvents, SyntheticRatings  # noqa: E402
from jobs.synthetic.snapshot import write_events, write_ratings  # noqa: E402
from jobs.train.config import GRUConfig, MFConfig, SkipgramConfig  # noqa: E402
from jobs.train.job import run  # noqa: E402
from schemas.store import StoreLayout  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 64
#: Least bytes moved per unit of throughput, float32 tables: mf per rating reads a user and an item row and
#: their biases, writes both rows' gradients, and the optimiser reads and writes weight, m and v of each
#: (2 rows x dim x 4 bytes x (1 + 1 + 6)); skipgram per word: window x (1 + negatives) pairs of two rows read
#: and written (x4 bytes x dim x 4 accesses, averaged over the random window ~ (window + 1) / 2);
#: gru per event: one embedding row and its softmax's share are compute-bound, counted as 2 rows x 4 accesses.
BYTES = {"mf": 2 * DIM * 4 * 8, "skipgram": ((5 + 1) / 2) * 2 * (1 + 5) * DIM * 4 * 2, "gru": 2 * DIM * 4 * 4}
TARGETS = {"mf_ratings_per_s": 20e6, "mf_rmse_within": 0.01, "skipgram_words_per_s": 5e6, "gru_events_per_s": 1e6}


def _rate(result: dict, key: str) -> float:
    history = result["metrics"]["history"]
    return max(h[key] for h in history if key in h)


def train(cfg, snapshot: tuple[Path, object], store: Path) -> dict:
    directory, manifest = snapshot
    started = time.perf_counter()
    result = run(cfg, StoreLayout(store), directory, manifest, resume=False).result
    return {"result": result, "wall_seconds": time.perf_counter() - started}


def mf_case(snapshots: dict, device: str, cpu_reference: bool, work: Path) -> dict:
    cfg = MFConfig(name="mf", dim=DIM, device=device)
    run_ = train(cfg, snapshots["ratings"], work / "mf")
    result = run_["result"]
    rows = snapshots["ratings"][1].counts.train
    rate = rows * result["metrics"]["epochs_run"] / result["metrics"]["train_seconds"]
    out = {"ratings": rows, "ratings_per_s": rate, "valid_rmse": result["metrics"]["valid_rmse"],
           "batch_size": result["params"]["batch_size"], "lr": result["params"]["lr"],
           "train_seconds": result["metrics"]["train_seconds"], "epochs": result["metrics"]["epochs_run"]}
    if cpu_reference:
        reference = snapshots.get("ratings_cpu", snapshots["ratings"])
        same = reference is snapshots["ratings"]
        gpu_small = out if same else _mf_on(snapshots["ratings_cpu"], device, work / "mf-small")
        cpu = _mf_on(reference, "cpu", work / "mf-cpu")
        out["cpu"] = {**cpu, "same_data": same}
        out["rmse_vs_cpu"] = gpu_small["valid_rmse"] / cpu["valid_rmse"] - 1
    return out


def _mf_on(snapshot, device: str, store: Path) -> dict:
    result = train(MFConfig(name="mf", dim=DIM, device=device), snapshot, store)["result"]
    rows = snapshot[1].counts.train
    return {"ratings_per_s": rows * result["metrics"]["epochs_run"] / result["metrics"]["train_seconds"],
            "valid_rmse": result["metrics"]["valid_rmse"], "ratings": rows}


def sequence_case(family: str, snapshots: dict, device: str, cpu_reference: bool, work: Path, epochs: int) -> dict:
    make = {"skipgram": lambda d: SkipgramConfig(name=family, dim=DIM, epochs=epochs, device=d),
            "gru": lambda d: GRUConfig(name=family, dim=DIM, epochs=epochs, patience=epochs, device=d)}[family]
    key = {"skipgram": "words_per_s", "gru": "events_per_s"}[family]
    result = train(make(device), snapshots["events"], work / family)["result"]
    out = {key: _rate(result, key), "valid_hr_at_10": result["metrics"]["valid_hr_at_10"], "epochs": epochs,
           "train_seconds": result["metrics"]["train_seconds"]}
    if cpu_reference:
        cpu = train(make("cpu"), snapshots["events"], work / f"{family}-cpu")["result"]
        out["cpu"] = {key: _rate(cpu, key), "valid_hr_at_10": cpu["metrics"]["valid_hr_at_10"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M ratings, 250k events")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cpu-reference", action="store_true", help="also train on CPU, for quality")
    parser.add_argument("--sequence-epochs", type=int, default=3)
    parser.add_argument("--peak-gbs", type=float, default=4800.0, help="peak memory bandwidth, GB/s (H200: 4800)")
    parser.add_argument("--families", default="mf,skipgram,gru")
    args = parser.parse_args()
    families = args.families.split(",")
    ratings_users = 6_500 if args.quick else 162_541
    with tempfile.TemporaryDirectory(prefix="latentstore-gpu-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        snapshots = {
            "ratings": (work / "ratings", write_ratings(work / "ratings", SyntheticRatings(
                users=ratings_users, items=59_047 if not args.quick else 23_600, clusters=20, ratings_per_user=155,
                noise=0.5, seed=42))),
            "events": (work / "events", write_events(work / "events", SyntheticEvents(
                users=5_000 if args.quick else 110_000, segments=8, seed=42), history_length=200, max_length=50)),
        }
        if args.cpu_reference and not args.quick and "mf" in families:
            snapshots["ratings_cpu"] = (work / "ratings-1m", write_ratings(work / "ratings-1m", SyntheticRatings(
                users=6_500, items=23_600, clusters=20, ratings_per_user=155, noise=0.5, seed=42)))
        data_seconds = time.perf_counter() - started
        out: dict = {"quick": args.quick, "device": args.device, "data_seconds": data_seconds, "targets": TARGETS}
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            props = torch.cuda.get_device_properties(0)
            out["gpu"] = {"name": props.name, "memory_gb": props.total_memory / 2**30, "peak_gbs": args.peak_gbs}
        if "mf" in families:
            out["mf"] = mf_case(snapshots, args.device, args.cpu_reference, work)
            print("mf", json.dumps(out["mf"]), flush=True)
        for family in ("skipgram", "gru"):
            if family in families:
                out[family] = sequence_case(family, snapshots, args.device, args.cpu_reference, work,
                                            args.sequence_epochs)
                print(family, json.dumps(out[family]), flush=True)
    rates = {"mf": out.get("mf", {}).get("ratings_per_s"), "skipgram": out.get("skipgram", {}).get("words_per_s"),
             "gru": out.get("gru", {}).get("events_per_s")}
    out["bandwidth_share"] = {f: rate * BYTES[f] / (args.peak_gbs * 1e9) for f, rate in rates.items() if rate}
    met = {}
    if "mf" in out:
        met["mf_ratings_per_s"] = out["mf"]["ratings_per_s"] >= TARGETS["mf_ratings_per_s"]
        if "rmse_vs_cpu" in out["mf"]:
            met["mf_rmse_within_1pct_of_cpu"] = abs(out["mf"]["rmse_vs_cpu"]) <= TARGETS["mf_rmse_within"]
    if "skipgram" in out:
        met["skipgram_words_per_s"] = out["skipgram"]["words_per_s"] >= TARGETS["skipgram_words_per_s"]
    if "gru" in out:
        met["gru_events_per_s"] = out["gru"]["events_per_s"] >= TARGETS["gru_events_per_s"]
    out["met"] = met
    out["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "cpus": __import__("os").cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("gpu-quick.json" if args.quick else "gpu.json")
    path.write_text(json.dumps(out, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
                    + "\n")
    print(f"-> {path}: {met}")


if __name__ == "__main__":
    main()
