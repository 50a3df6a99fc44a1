"""Settings of the synthetic generators: what ``[index.input.synthetic]`` holds.

The generators own them (jobs.synthetic.ratings, jobs.synthetic.events); the index
config only names them as one kind of input, and the index stage (jobs.stages)
generates the file before the index job reads it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from jobs.common.config import StrictModel


class SyntheticRatings(StrictModel):
    """Generate a ratings set with planted taste clusters instead of reading a file."""

    kind: Literal["ratings"] = "ratings"
    """What to generate (set from ``index.kind``)."""
    users: int = Field(2000, ge=10)
    """Number of users."""
    items: int = Field(600, ge=10)
    """Number of items."""
    clusters: int = Field(6, ge=2)
    """Planted taste clusters; users and items each belong to one."""
    ratings_per_user: int = Field(40, ge=5)
    """Mean ratings per user (Poisson)."""
    noise: float = Field(0.5, ge=0)
    """Standard deviation of the rating noise, in stars."""
    seed: int = 42
    """Seed of the generator; the same settings give the same file."""


class SyntheticEvents(StrictModel):
    """Generate an event log with planted user segments instead of reading a file (see jobs.synthetic.events).

    Every token (a page view of a page type on a portal, a scroll depth on a page type,
    a search category, a purchased item) belongs to one of ``segments`` groups; a user
    belongs to one segment and draws most events from its group, following its typical
    transitions.
    """

    kind: Literal["events"] = "events"
    """What to generate (set from ``index.kind``)."""
    users: int = Field(2000, ge=10)
    """Number of users."""
    segments: int = Field(8, ge=2)
    """Hidden user segments; the tokens are split into as many planted groups."""
    sessions_per_user: float = Field(6.0, gt=0)
    """Mean sessions per user (1 + Poisson)."""
    events_per_session: float = Field(8.0, ge=1)
    """Mean events per session (geometric, at least 1)."""
    page_types: int = Field(16, ge=1)
    """Page types (home, product, ...); page views are page type x portal."""
    portals: int = Field(6, ge=1)
    """Portals (sites or countries)."""
    search_categories: int = Field(24, ge=1)
    """Categories of search events."""
    items: int = Field(240, ge=1)
    """Purchasable items."""
    follow: float = Field(0.5, ge=0, le=1)
    """Chance that an in-group event is its previous token's planted successor (the typical transition)."""
    overlap: float = Field(0.1, ge=0, le=1)
    """Share of events drawn from the next segment's group (segments overlap)."""
    noise: float = Field(0.1, ge=0, le=1)
    """Share of events drawn from all tokens by popularity (noise)."""
    dirty: float = Field(0.002, ge=0, le=1)
    """Share of rows with a defect the index stage must quarantine (missing user, bad time, unknown type, ...)."""
    seed: int = 42
    """Seed of the generator; the same settings give the same file."""

    @model_validator(mode="after")
    def _shares(self) -> "SyntheticEvents":
        if self.overlap + self.noise > 1:
            raise ValueError("overlap + noise must be at most 1")
        return self


def _synthetic_kind(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "ratings"))
    return str(getattr(value, "kind", "ratings"))


#: One generator's settings, chosen by ``kind`` (which ``index.kind`` sets when it is not given).
Synthetic = Annotated[
    Annotated[SyntheticRatings, Tag("ratings")] | Annotated[SyntheticEvents, Tag("events")],
    Discriminator(_synthetic_kind),
]
