"""Config of the train stage: one frozen model per model family, chosen by ``model``.

    [train]              # one model
    model = "mf"
    [[train]]            # or several models over the same snapshot
    model = "skipgram"
    [[train]]
    model = "gru"

Defaults train each family to a useful result on its shipped config in
seconds to a minute on 2 CPU cores.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from jobs.common.config import StrictModel
from schemas.store import check_name


class ModelConfig(StrictModel):
    """What every model family shares: name, size, schedule, seed and device."""

    name: str | None = None
    """Published model name; default: the config's name, or ``<name>_<model>`` when it trains several."""
    dim: int = Field(50, ge=1, le=4096)
    """Vector size."""
    epochs: int = Field(10, ge=1)
    """Passes over the training split."""
    lr: float = Field(1.5e-2, gt=0)
    """(Peak) learning rate."""
    seed: int = 42
    """Seeds initialisation, shuffling and sampling; same seed, threads and torch -> same vectors (CPU)."""
    device: str = "auto"
    """auto (first CUDA GPU if present, else CPU), cpu, cuda or cuda:N."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; default: all cores (at most 8)."""
    warm_start: str | None = None
    """Fold-in (jobs.train.fold_in): "current" (the run of the model's current version) or a run id to start
    from; the snapshot must be a rebuild of that run's (same vocabulary lineage). None: train from scratch."""
    fold_in: Literal["new", "all"] = "new"
    """With ``warm_start``: "new" trains only the rows the rebuild appended (the parent's stay bitwise as they
    were); "all" trains every row for ``epochs`` (set a few)."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Autocast dtype of training steps. auto: bf16 on CUDA (fp16 on GPUs without bf16), float32 on CPU;
    bf16 on CPU runs the CUDA code path (slower there: for checks, not speed)."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return value if value is None else check_name(value, "train.name")

    @field_validator("warm_start")
    @classmethod
    def _warm_start(cls, value: str | None) -> str | None:
        if value is not None and value != "current" and not value.isalnum():
            raise ValueError('warm_start must be "current" or a run id (letters and digits)')
        return value


class MFConfig(ModelConfig):
    """Biased matrix factorisation (``mf``) on ratings: rating = squash(user . item + user bias + item bias)."""

    model: Literal["mf"] = "mf"
    """Model family. ``mf``: explicit ratings (fast.ai EmbeddingDotBias)."""
    dim: int = Field(64, ge=1, le=4096)
    """Vector size."""
    batch_size: int | None = Field(None, ge=1)
    """Ratings per optimiser step. None: chosen from the data and the device (``jobs.train.mf.scaled``):
    about 1/48 of the training ratings, a power of two between 2048 and 65,536 (262,144 on CUDA)."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate of the one-cycle schedule. None: 0.015 (see jobs.train.mf.AUTO_BASE_LR for why
    it does not grow with the batch)."""
    weight_decay: float = Field(1.5, ge=0)
    """Decoupled weight decay on the user and item vectors: lr x weight_decay per step that uses a row
    (tables larger than a batch) or per step (smaller tables, updated whole: see jobs.train.row_adamw)."""
    bias_weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay on the biases (0 works best: biases carry popularity)."""
    implicit: bool = True
    """Add implicit feedback to user vectors (SVD++): the normalised sum of a second vector
    of every item the user rated in the training split. Costs one sparse product per step."""
    implicit_weight_decay: float = Field(4.0, ge=0)
    """Decoupled weight decay on the implicit item vectors."""
    implicit_max_items: int | None = Field(None, ge=1)
    """Per training step, a user with more rated items than this sums a uniform sample of this many
    (reweighted: the same sum in expectation), bounding a step's cost; published vectors use every item.
    None: the largest that keeps a step within ``implicit_budget`` (every item when the data allows)."""
    implicit_budget: float | None = Field(64.0, gt=0)
    """Implicit-term lookups a step may cost per rating in its batch, on average (exactly: the bags of the
    batch's distinct users); sets ``implicit_max_items`` when that is unset. MovieLens 100K needs 40 at
    batch 2048, so it is exact; 25M ratings would need 137 at batch 65,536. None: never sample."""
    average_from: float = Field(0.5, ge=0, le=1)
    """Average the weights of every epoch from this fraction of training on (1.0: off)."""
    y_range: tuple[float, float] | None = None
    """Output range of the sigmoid; default: the snapshot's rating range widened by 0.5 each side."""
    init_std: float = Field(0.05, gt=0)
    """Standard deviation of the initial vectors."""
    patience: int = Field(3, ge=1)
    """Stop when validation RMSE has not improved for this many epochs."""
    shuffle_buffer_rows: int = Field(2_000_000, ge=1)
    """Rows shuffled together in memory; data larger than this streams from Parquet."""


class SequenceModelConfig(ModelConfig):
    """What the two sequence models share: streaming, validation and user vectors."""

    shuffle_buffer_sessions: int = Field(200_000, ge=1)
    """Sessions shuffled together in memory; data larger than this streams from Parquet."""
    eval_users: int = Field(20_000, ge=1)
    """Validate on at most this many users with held-out events (a seeded sample), to bound the time per epoch."""
    exclude_seen: bool = False
    """Rank a held-out event only against tokens absent from the user's history (MovieLens protocol:
    items the user has not rated). Off for event logs, where tokens repeat."""


class SkipgramConfig(SequenceModelConfig):
    """word2vec skip-gram with negative sampling over sessions (item2vec): one vector per token.

    A user's vector is the mean of the unit vectors of their last ``user_events`` tokens, in the
    token space: the tokens nearest to it are the model's guess at the user's next events.
    """

    model: Literal["skipgram"] = "skipgram"
    dim: int = Field(64, ge=1, le=4096)
    epochs: int = Field(5, ge=1)
    lr: float = Field(0.025, gt=0)
    """Initial SGD learning rate, decayed linearly to ``min_lr`` over all epochs (as word2vec)."""
    min_lr: float = Field(1e-4, ge=0)
    """Learning rate at the end of training."""
    window: int = Field(5, ge=1)
    """Maximum distance between a token and its context within a session (reduced at random per token, as word2vec)."""
    negatives: int = Field(5, ge=1)
    """Negative samples per (token, context) pair, drawn from unigram counts ** ``ns_exponent``."""
    ns_exponent: float = 0.75
    """Exponent of the negative-sampling distribution."""
    sample: float = Field(1e-3, ge=0)
    """Frequent-token subsampling threshold (word2vec's ``sample``; 0: off)."""
    batch_size: int = Field(4096, ge=1)
    """(token, context) pairs per update step."""
    user_events: int = Field(5, ge=1)
    """A user's vector (and the validation query) is the mean over their last this many events."""


class GRUConfig(SequenceModelConfig):
    """Embedding -> GRU -> next-token prediction over sessions.

    Publishes three tables: ``token`` (the input embeddings), ``user`` (each user's final hidden
    state over their last ``user_events`` events: a different space from the tokens, of size
    ``hidden``) and ``next_token`` (the output layer: score of a token as the next event =
    user . vector + bias, in the user space).
    """

    model: Literal["gru"] = "gru"
    dim: int = Field(64, ge=1, le=4096)
    """Size of the token (input) embeddings."""
    hidden: int = Field(128, ge=1, le=8192)
    """Size of the GRU state: the user vectors and the output layer."""
    layers: int = Field(1, ge=1, le=8)
    """Stacked GRU layers."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout on the embeddings and on the GRU output during training."""
    epochs: int = Field(10, ge=1)
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate of the one-cycle schedule (AdamW)."""
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay (AdamW)."""
    batch_size: int = Field(64, ge=1)
    """Sessions per optimiser step."""
    loss: Literal["auto", "full", "sampled"] = "auto"
    """full: softmax over every token; sampled: over the target and ``sampled_negatives`` tokens shared
    by the batch (corrected for their sampling probability); auto: full up to 50,000 tokens."""
    sampled_negatives: int = Field(2048, ge=1)
    """Negatives per batch for the sampled softmax."""
    user_events: int = Field(50, ge=1)
    """The user vector is the final GRU state over the user's last this many events."""
    patience: int = Field(3, ge=1)
    """Stop when validation HR@10 has not improved for this many epochs; the best epoch's weights are kept."""


def _model_name(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("model", "mf"))
    return str(getattr(value, "model", "mf"))


TrainConfig = Annotated[
    Annotated[MFConfig, Tag("mf")] | Annotated[SkipgramConfig, Tag("skipgram")] | Annotated[GRUConfig, Tag("gru")],
    Discriminator(_model_name, custom_error_type="model", custom_error_message="train.model must be mf, skipgram or gru"),
]
#: Families that read ratings snapshots, and those that read event (session) snapshots.
RATINGS_MODELS = frozenset({"mf"})
SEQUENCE_MODELS = frozenset({"skipgram", "gru"})
