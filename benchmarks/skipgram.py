"""The project's skip-gram against gensim's Word2Vec: words per second at equal quality.

    .venv/bin/python benchmarks/skipgram.py [--users 20000] [--repeats 3]

Both train on the same sequences: the training sessions of the synthetic event
log of configs/synthetic-events.toml (``--users`` users; the result's top level),
and MovieLens 100K as sequences (configs/movielens-100k-sequences.toml; under
``movielens``, quality = next-movie HR@10 as in benchmarks/sequences.py, when the
data is there), with the same settings:
skip-gram, dim 64, window 5, 5 negatives, ns_exponent 0.75, sample 1e-3,
learning rate 0.025 -> 1e-4 over 5 epochs, 2 CPU threads (gensim: 2 workers),
every token kept (min_count 1). Timed: training only (gensim's ``train`` after
``build_vocab``; the project's ``train_epoch`` calls, no validation), interleaved
``--repeats`` times so that machine noise hits both alike; medians reported.

words/s = tokens in the sessions x epochs / training seconds, for both (raw
words, before subsampling). Quality = the share of each token's 10 nearest
neighbours (cosine) in its planted group. Target on CPU: at least 0.25x gensim's
words/s at equal quality. Needs the ``bench`` extra (gensim). Writes
benchmarks/results/skipgram.json.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, spark_env, write_result  # noqa: E402
from benchmarks.planted import _config  # noqa: E402

EPOCHS, DIM, WINDOW, NEGATIVES, SAMPLE, THREADS = 5, 64, 5, 5, 1e-3, 2
TARGET = 0.25


def run_latentstore(snapshot: Path, manifest, seed: int) -> tuple[float, np.ndarray]:
    import torch

    from jobs.train.config import SkipgramConfig
    from jobs.train.device import configure_threads
    from jobs.train.skipgram import build

    cfg = SkipgramConfig(name="bench", dim=DIM, window=WINDOW, negatives=NEGATIVES, sample=SAMPLE, epochs=EPOCHS,
                         lr=0.025, min_lr=1e-4, seed=seed, threads=THREADS, device="cpu", eval_users=1)
    configure_threads(cfg.threads)
    learner = build(cfg, snapshot, manifest, torch.device("cpu")).learner
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        learner.train_epoch(epoch)
    return time.perf_counter() - started, learner.module.input.data.numpy().copy()


def run_gensim(sentences: list[list[str]], n_tokens: int, seed: int) -> tuple[float, np.ndarray]:
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=DIM, window=WINDOW, negative=NEGATIVES, ns_exponent=0.75, sample=SAMPLE, sg=1,
                     min_count=1, workers=THREADS, alpha=0.025, min_alpha=1e-4, seed=seed)
    model.build_vocab(sentences)
    started = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=EPOCHS)
    seconds = time.perf_counter() - started
    vectors = np.zeros((n_tokens, DIM), np.float32)
    for token in model.wv.index_to_key:
        vectors[int(token)] = model.wv[token]
    return seconds, vectors


def _indexed(cfg, name: str):
    from jobs import stages
    from jobs.index.snapshots import read_manifest
    from schemas.store import StoreLayout

    workdir = ROOT / "benchmarks" / "data" / "skipgram" / name
    shutil.rmtree(workdir, ignore_errors=True)
    store = StoreLayout(workdir)
    indexed = stages.index(cfg, store)
    snapshot = store.snapshot_dir(cfg.index.dataset, indexed["snapshot_id"])
    return store, snapshot, read_manifest(snapshot)


def race(snapshot: Path, manifest, quality, repeats: int, quality_name: str) -> dict:
    """Both trainers on the snapshot's sessions, interleaved ``repeats`` times; medians and every run."""
    from jobs.train.sequences import Sessions
    from schemas.snapshot import SESSIONS_DIR

    sessions = Sessions(snapshot / SESSIONS_DIR, 1 << 30)
    sentences = []
    for block in sessions.blocks(0, 0):
        sentences += [[str(t) for t in block.values[a:b]] for a, b in zip(block.offsets[:-1], block.offsets[1:])]
    runs = {"latentstore": [], "gensim": []}
    for repeat in range(repeats):
        for name, runner in (("latentstore", lambda: run_latentstore(snapshot, manifest, 42 + repeat)),
                             ("gensim", lambda: run_gensim(sentences, manifest.vocab["token"].size, 42 + repeat))):
            seconds, vectors = runner()
            runs[name].append({"seconds": seconds, "words_per_s": sessions.tokens * EPOCHS / seconds,
                               quality_name: quality(vectors)})
            print(f"{name:12s} {runs[name][-1]['words_per_s']:10.0f} words/s  {quality_name} {runs[name][-1][quality_name]:.3f}")
    summary = {name: {"words_per_s": statistics.median(r["words_per_s"] for r in rs),
                      quality_name: statistics.median(r[quality_name] for r in rs), "runs": rs}
               for name, rs in runs.items()}
    ratio = summary["latentstore"]["words_per_s"] / summary["gensim"]["words_per_s"]
    equal = summary["latentstore"][quality_name] >= summary["gensim"][quality_name] - 0.01
    return {**summary, "corpus": {"sessions": sessions.sessions, "words": sessions.tokens,
                                  "tokens": manifest.vocab["token"].keys, "epochs": EPOCHS},
            "words_per_s_ratio": ratio, "equal_quality": equal, "met": ratio >= TARGET and equal}


def synthetic(users: int, repeats: int) -> dict:
    import pyarrow.parquet as pq

    from jobs.stages import resolve_input
    from jobs.synthetic.planted import neighbour_share, planted_labels
    from schemas.snapshot import vocab_dir

    cfg = _config(users)
    store, snapshot, manifest = _indexed(cfg, "synthetic")
    group, _ = planted_labels(Path(resolve_input(cfg.index, store).input.path))
    vocab = pq.read_table(snapshot / vocab_dir("token")).to_pandas()
    published = vocab[vocab["index"] > 0]  # the tokens the store publishes
    rows, labels = published["index"].to_numpy(), np.array([group[k] for k in published["key"]])
    result = race(snapshot, manifest, lambda vectors: neighbour_share(vectors[rows], labels), repeats,
                  "neighbour_quality")
    result["corpus"]["users"] = users
    return result


def movielens(repeats: int) -> dict:
    import torch

    from benchmarks.sequences import CONFIG
    from jobs.config import load_config
    from jobs.train import ranking
    from jobs.train.sequences import Histories
    from schemas.snapshot import HISTORIES_DIR

    cfg = load_config(CONFIG)
    _, snapshot, manifest = _indexed(cfg, "movielens")
    cases = Histories(snapshot / HISTORIES_DIR).cases(1 << 30, seed=0)

    def hr_at_10(vectors: np.ndarray) -> float:
        unit = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=1)

        def score(contexts):
            recent = contexts.last(5)
            rows = torch.from_numpy(np.repeat(np.arange(len(recent)), recent.lengths))
            query = torch.zeros(len(recent), unit.shape[1]).index_add_(0, rows, unit[torch.from_numpy(recent.values)])
            return torch.nn.functional.normalize(query, dim=1) @ unit.T

        return ranking.evaluate(cases, score, unit.shape[0], exclude_seen=True)["valid_hr_at_10"]

    return race(snapshot, manifest, hr_at_10, repeats, "hr_at_10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spark_env()
    logging.basicConfig(level=logging.WARNING)
    from benchmarks._common import SHARED

    payload = {**synthetic(args.users, args.repeats),
               "settings": {"dim": DIM, "window": WINDOW, "negatives": NEGATIVES, "sample": SAMPLE,
                            "threads": THREADS, "epochs": EPOCHS},
               "target_ratio": TARGET}
    if (SHARED / "movielens-100k" / "ratings.csv").is_file():
        payload["movielens"] = movielens(args.repeats)
    path = write_result("skipgram", payload)
    print(f"synthetic: latentstore / gensim words/s = {payload['words_per_s_ratio']:.2f} (target {TARGET}), "
          f"equal quality: {payload['equal_quality']}")
    if "movielens" in payload:
        print(f"movielens: latentstore / gensim words/s = {payload['movielens']['words_per_s_ratio']:.2f}, "
              f"equal quality: {payload['movielens']['equal_quality']}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
