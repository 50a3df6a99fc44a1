"""Sequence models: one epoch each, resume, determinism, planted structure, the ranking metric."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.synthetic.planted import knn_accuracy, neighbour_share, planted_labels
from jobs.train.config import GRUConfig, MFConfig, SkipgramConfig
from jobs.train.gru import GRULearner
from jobs.train.job import CHECKPOINT, run
from jobs.train.ranking import evaluate, ranks
from jobs.train.sequences import Histories, Ragged, Sessions
from schemas.snapshot import HISTORIES_DIR, SESSIONS_DIR
from schemas.errors import ConfigError
from schemas.store import StoreLayout
from tests.helpers import SMALL_EVENTS, events_config, index_snapshot

SMALL = {"skipgram": {"epochs": 2, "threads": 1, "device": "cpu"},
         "gru": {"epochs": 2, "threads": 1, "device": "cpu", "dim": 16, "hidden": 32}}
FAMILIES = {"skipgram": SkipgramConfig, "gru": GRUConfig}
HR = "valid_hr_at_10"


@pytest.fixture(scope="module")
def events_snapshot(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("sequences")
    return (*index_snapshot(events_config(base), base / "store"), base / "store")


def _train(tmp_path, snapshot, family, name="s", **overrides):
    cfg = FAMILIES[family](name="m", **{**SMALL[family], **overrides})
    directory, manifest, _ = snapshot
    return run(cfg, StoreLayout(tmp_path / name), directory, manifest, resume=True), cfg


def _baselines(snapshot, cfg) -> dict[str, float]:
    """HR@10 on the model's own validation cases of random scores and of popularity (training counts)."""
    directory, manifest, _ = snapshot
    n = manifest.vocab["token"].size
    cases = Histories(directory / HISTORIES_DIR).cases(cfg.eval_users, cfg.seed)
    counts = torch.from_numpy(Sessions(directory / SESSIONS_DIR, 10**9).token_counts(n).astype(np.float32))
    counts[0] = -1.0  # the unknown token is never a candidate worth ranking
    exclude = getattr(cfg, "exclude_seen", False)
    generator = torch.Generator().manual_seed(0)
    return {"random": evaluate(cases, lambda c: torch.rand(len(c), n, generator=generator), n, exclude)[HR],
            "popularity": evaluate(cases, lambda c: counts.expand(len(c), n), n, exclude)[HR]}


def _vectors(result) -> dict:
    return {path.stem: pq.read_table(path).to_pydict() for path in sorted((result.path / "vectors").glob("*.parquet"))}


devices = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("family", ["skipgram", "gru"])
def test_one_epoch_trains_validates_and_writes_every_table(tmp_path, events_snapshot, family, device):
    result, cfg = _train(tmp_path, events_snapshot, family, epochs=1, device=device)
    assert result.result["runtime"]["device"].startswith(device)
    manifest = events_snapshot[1]
    metrics = result.result["metrics"]
    assert metrics["epochs_run"] == 1 and len(metrics["history"]) == 1
    assert 0 < metrics["valid_hr_at_10"] <= 1 and 0 < metrics["valid_ndcg_at_10"] <= metrics["valid_hr_at_10"]
    assert metrics["valid_hr_at_10"] > _baselines(events_snapshot, cfg)["random"]  # one epoch already learns
    assert metrics["valid_cases"] == manifest.counts.valid  # every held-out event, all users sampled
    assert result.result["primary_metric"] == {"name": "valid_hr_at_10", "value": metrics["valid_hr_at_10"],
                                               "direction": "maximize"}
    vectors = _vectors(result)
    expected = {"skipgram": {"token", "user"}, "gru": {"token", "user", "next_token"}}[family]
    assert set(vectors) == expected
    trained = Sessions(events_snapshot[0] / SESSIONS_DIR, 10**9).token_counts(manifest.vocab["token"].size)
    assert sorted(vectors["token"]["index"]) == [i for i in range(1, trained.size) if trained[i] > 0]
    assert len(vectors["user"]["index"]) == manifest.sessions.users_indexed
    assert len(vectors["token"]["vector"][0]) == cfg.dim
    assert len(vectors["user"]["vector"][0]) == (cfg.dim if family == "skipgram" else cfg.hidden)
    entities = result.result["entities"]
    assert entities["user"]["space"] == ("token" if family == "skipgram" else "state")
    if family == "gru":
        assert entities["next_token"] == {"rows": len(vectors["token"]["index"]), "dim": cfg.hidden,
                                          "vocab": "token", "space": "state", "bias": True}
        assert all(b is not None for b in vectors["next_token"]["bias"])
    assert all(b is None for b in vectors["token"]["bias"])


@pytest.mark.parametrize("family", ["skipgram", "gru"])
def test_same_seed_same_bits_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, events_snapshot, family):
    straight, cfg = _train(tmp_path, events_snapshot, family, "straight")
    again, _ = _train(tmp_path, events_snapshot, family, "again")
    assert _vectors(straight) == _vectors(again)
    directory, manifest, _ = events_snapshot
    store = StoreLayout(tmp_path / "killed")
    partial = run(cfg, store, directory, manifest, stop_after_epochs=1)
    assert partial.result == {"partial": True, "epochs_done": 1} and (partial.path / CHECKPOINT).is_file()
    resumed = run(cfg, store, directory, manifest, resume=True)
    assert resumed.run_id == straight.run_id and _vectors(resumed) == _vectors(straight)
    assert [h["valid_hr_at_10"] for h in resumed.result["metrics"]["history"]] == \
        [h["valid_hr_at_10"] for h in straight.result["metrics"]["history"]]
    other, _ = _train(tmp_path, events_snapshot, family, "other", seed=7)
    assert _vectors(other) != _vectors(straight)


@pytest.mark.parametrize("family", ["skipgram", "gru"])
def test_sessions_larger_than_the_buffer_stream_in_blocks(tmp_path, events_snapshot, family):
    """A buffer smaller than the data: blocks cover every session once, the same way on every run."""
    directory, manifest, _ = events_snapshot
    whole = Sessions(directory / SESSIONS_DIR, buffer_sessions=10**9)
    streamed = Sessions(directory / SESSIONS_DIR, buffer_sessions=100)
    blocks = list(streamed.blocks(seed=3, epoch=1))
    assert len(blocks) == -(-whole.sessions // 100) and all(len(b) <= 100 for b in blocks)
    assert sorted(map(tuple, _sessions_of(blocks))) == sorted(map(tuple, _sessions_of(list(whole.blocks(3, 1)))))
    assert _sessions_of(blocks) == _sessions_of(list(streamed.blocks(seed=3, epoch=1)))
    assert _sessions_of(blocks) != _sessions_of(list(streamed.blocks(seed=3, epoch=2)))
    assert streamed.token_counts(manifest.vocab["token"].size).sum() == whole.tokens
    small, _ = _train(tmp_path, events_snapshot, family, "small", shuffle_buffer_sessions=100)
    again, _ = _train(tmp_path, events_snapshot, family, "again", shuffle_buffer_sessions=100)
    assert _vectors(small) == _vectors(again) and small.result["metrics"]["valid_hr_at_10"] > 0


def _sessions_of(blocks) -> list[list[int]]:
    return [b.values[x:y].tolist() for b in blocks for x, y in zip(b.offsets[:-1], b.offsets[1:])]


def test_a_ratings_model_on_an_events_snapshot_is_a_clear_error(tmp_path, events_snapshot):
    directory, manifest, _ = events_snapshot
    with pytest.raises(ConfigError, match="train.model = 'mf' needs a ratings snapshot"):
        run(MFConfig(name="m"), StoreLayout(tmp_path / "x"), directory, manifest)


@pytest.mark.slow
@pytest.mark.parametrize("family, overrides", [("skipgram", {"epochs": 5}), ("gru", {"epochs": 8, "dim": 64, "hidden": 128})])
def test_vectors_recover_the_planted_groups_and_segments(tmp_path, events_snapshot, family, overrides):
    """Tokens' nearest neighbours share their planted group; users' their segment; random vectors do not."""
    result, cfg = _train(tmp_path, events_snapshot, family, **overrides)
    (events_file,) = (events_snapshot[2] / "inputs").glob("*.parquet")
    planted, segments = planted_labels(events_file)
    snapshot = events_snapshot[0]
    vectors = _vectors(result)
    for table, truth in (("token", planted), ("user", segments)):
        vocab = pq.read_table(snapshot / "vocab" / table).to_pandas().set_index("index")["key"]
        rows = [i for i in vectors[table]["index"] if i != 0]
        keep = np.isin(vectors[table]["index"], rows)
        matrix = np.asarray(vectors[table]["vector"])[keep]
        labels = np.array([truth[key] for key in vocab.loc[rows]])
        share = neighbour_share(matrix, labels)
        accuracy = knn_accuracy(matrix, labels)
        random = neighbour_share(np.random.default_rng(42).normal(size=matrix.shape), labels)
        chance = 1 / SMALL_EVENTS["segments"]
        assert share >= 0.85 and accuracy >= 0.85 and random < 2 * chance, (table, share, accuracy, random)
    baselines = _baselines(events_snapshot, cfg)
    assert result.result["metrics"][HR] > baselines["popularity"] > baselines["random"], baselines


def test_planted_measures_on_a_hand_made_example():
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # nearest other row by cosine: 0->1, 1->0, 2->1, 3->4, 4->3, 5->2 (label 0: a miss)
    assert neighbour_share(vectors, labels, k=1) == pytest.approx(5 / 6)
    assert knn_accuracy(vectors, labels, k=1) == pytest.approx(5 / 6)
    # Euclidean on 1-D counts: the popularity baseline's metric
    assert neighbour_share(np.array([[1.0], [1.1], [5.0], [5.2]]), np.array([0, 1, 0, 1]), k=1,
                           metric="euclidean") == 0.0


def test_ranks_break_ties_by_index_and_skip_unknown_and_seen_tokens():
    scores = torch.tensor([[9.0, 1.0, 3.0, 3.0, 2.0],    # target 3 ties with 2 (smaller index): rank 1
                           [0.0, 5.0, 4.0, 6.0, 1.0],    # target 2, beaten by 3 and 1 -> 2; seen {3} -> 1
                           [0.0, 1.0, 1.0, 1.0, 1.0]])   # target 1, ties after nothing smaller -> 0
    targets = torch.tensor([3, 2, 1])
    assert ranks(scores, targets).tolist() == [1, 2, 0]  # token 0 (unknown) never counts, even at score 9
    seen = Ragged(np.array([3, 3, 2, 1]), np.array([0, 1, 3, 4]))  # case 1 saw 3 and its own target 2
    assert ranks(scores, targets, seen).tolist() == [1, 1, 0]  # case 0's target itself stays a candidate
    # NaN is no score: a NaN candidate ranks below all, a NaN target (no prediction, or divergence) is a miss
    nan = float("nan")
    odd = torch.tensor([[0.0, nan, 2.0, 1.0], [0.0, 1.0, nan, 3.0], [nan] * 4])
    assert ranks(odd, torch.tensor([3, 2, 1])).tolist() == [1, 4, 4]


def test_ragged_take_last_and_padding():
    seqs = Ragged(np.array([1, 2, 3, 4, 5, 6]), np.array([0, 3, 3, 6]))
    taken = seqs.take(np.array([2, 0]))
    assert taken.values.tolist() == [4, 5, 6, 1, 2, 3] and taken.offsets.tolist() == [0, 3, 6]
    last = seqs.last(2)
    assert last.values.tolist() == [2, 3, 5, 6] and last.lengths.tolist() == [2, 0, 2]
    padded, lengths = seqs.padded()
    assert padded.tolist() == [[1, 2, 3], [0, 0, 0], [4, 5, 6]] and lengths.tolist() == [3, 0, 3]
    assert math.isclose(float(lengths.float().mean()), 2.0)



def test_gru_with_a_sampled_softmax_learns_about_as_well_as_with_the_full_one(tmp_path, events_snapshot):
    """The sampled loss (the default beyond FULL_SOFTMAX_MAX_TOKENS tokens) with 32 shared negatives, against
    a softmax over every token (0.29 and 0.37 here, random scores 0.15)."""
    full, cfg = _train(tmp_path, events_snapshot, "gru", "full", loss="full")
    sampled, _ = _train(tmp_path, events_snapshot, "gru", "sampled", loss="sampled", sampled_negatives=32)
    hit_rates = {name: run.result["metrics"][HR] for name, run in (("full", full), ("sampled", sampled))}
    random = _baselines(events_snapshot, cfg)["random"]
    assert hit_rates["sampled"] > random and hit_rates["sampled"] >= 0.7 * hit_rates["full"], (hit_rates, random)


def test_the_sampled_softmax_tends_to_the_full_one_plus_the_log_of_the_targets_expected_count(events_snapshot):
    """With many negatives, sum_j exp(s_j - log(n q_j)) over the sample tends to the sum of exp(s_j) over the
    tokens it can draw: the loss tends to -s_t + log sum_{j != t} exp(s_j) + log(n q_t), whose gradient is
    the full softmax's. Without the logQ correction it would be off by about log(n)."""
    directory, manifest, _ = events_snapshot
    n_tokens, draws = manifest.vocab["token"].size, 200_000
    cfg = GRUConfig(name="m", dim=16, hidden=32, loss="sampled", sampled_negatives=draws, device="cpu")
    learner = GRULearner(cfg, Sessions(directory / SESSIONS_DIR, 10**9), Histories(directory / HISTORIES_DIR),
                         n_tokens, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    states = 3 * torch.randn(64, cfg.hidden, generator=generator)  # scores that differ between tokens
    targets = torch.from_numpy(learner.trained).long()[torch.randint(len(learner.trained), (64,), generator=generator)]
    with torch.no_grad():
        sampled = float(learner._loss(states, targets, generator))
        scores = learner.module.scores(states).double()
        others = scores.masked_fill(learner.noise[None, :] == 0, -math.inf).scatter(1, targets[:, None], -math.inf)
        limit = (-scores.gather(1, targets[:, None])[:, 0] + torch.logsumexp(others, 1)
                 + torch.log(learner.noise[targets].double() * draws)).mean()
    assert sampled == pytest.approx(float(limit), rel=0.01)
