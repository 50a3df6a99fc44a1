"""Config of the train stage. Defaults train MovieLens-100K to RMSE ~0.885 in about a second on CPU."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from jobs.common.config import StrictModel


class TrainConfig(StrictModel):
    """Biased matrix factorisation (``mf``): rating = squash(user . item + user bias + item bias)."""

    model: Literal["mf"] = "mf"
    """Model family. ``mf``: explicit ratings (fast.ai EmbeddingDotBias)."""
    dim: int = Field(50, ge=1, le=4096)
    """Vector size."""
    epochs: int = Field(10, ge=1)
    """Passes over the training split (one-cycle learning-rate schedule over all of them)."""
    batch_size: int = Field(2048, ge=1)
    """Ratings per optimiser step."""
    lr: float = Field(1.5e-2, gt=0)
    """Peak learning rate of the one-cycle schedule (AdamW)."""
    weight_decay: float = Field(1.5, ge=0)
    """Decoupled weight decay on the user and item vectors."""
    bias_weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay on the biases (0 works best: biases carry popularity)."""
    implicit: bool = True
    """Add implicit feedback to user vectors (SVD++): the normalised sum of a second vector
    of every item the user rated in the training split. Costs one sparse product per step."""
    implicit_weight_decay: float = Field(4.0, ge=0)
    """Decoupled weight decay on the implicit item vectors."""
    average_from: float = Field(0.5, ge=0, le=1)
    """Average the weights of every epoch from this fraction of training on (1.0: off)."""
    y_range: tuple[float, float] | None = None
    """Output range of the sigmoid; default: the snapshot's rating range widened by 0.5 each side."""
    init_std: float = Field(0.01, gt=0)
    """Standard deviation of the initial vectors."""
    patience: int = Field(3, ge=1)
    """Stop when validation RMSE has not improved for this many epochs."""
    seed: int = 42
    """Seeds initialisation and shuffling; same seed, threads and torch -> same vectors (CPU)."""
    device: str = "auto"
    """auto (first CUDA GPU if present, else CPU), cpu, cuda or cuda:N."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; default: all cores (at most 8)."""
    shuffle_buffer_rows: int = Field(2_000_000, ge=1)
    """Rows shuffled together in memory; data larger than this streams from Parquet."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value
