"""Synthetic event log: page views, scrolls, searches and purchases of users in hidden segments.

The tokens (with the templates and buckets of ``TEMPLATES`` and ``BUCKETS``):

- ``page_view:<page_type>:<portal>``   page types x portals
- ``scroll:<page_type>:<depth>px``     page types x 6 depth buckets (0-250px ... 4000-8000px)
- ``search:<category>``                search categories
- ``purchase:<item>``                  items

are split into ``segments`` planted groups of equal size per kind (a seeded
round robin). Each user belongs to one segment. Within a session every event is,
with the documented shares of ``SyntheticEvents``:

- ``noise``: any token, by global popularity;
- ``overlap``: a token of the next segment's group, by popularity;
- otherwise a token of the user's own group: with chance ``follow`` the planted
  successor of the previous token (each group's tokens form one random cycle:
  its typical transitions), else by popularity within the group (Zipf 0.8).

Sessions per user are 1 + Poisson, events per session geometric; events in a
session are 0-20 minutes apart (some in the same millisecond as the previous,
different, token, to exercise the tie-break), sessions at least 31 minutes apart,
over 28 days. A share ``dirty``
of rows carry one defect each among those that apply to the row (missing user,
unparsable time, unknown type, a page view without portal, a negative scroll
depth, an exact copy), which the index stage must quarantine or count.

Output: Parquet with ``user_id, ts`` (ISO-8601 text), ``event, page_type, portal,
pixels, category, item``; beside it ``<name>.tokens.csv`` (token, group, kind) and
``<name>.users.csv`` (user, segment) with the planted truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.synthetic import files
from jobs.synthetic.config import SyntheticEvents
from schemas.events import bucket_labels, log_edges

#: The templates and buckets this generator's tokens are designed for (configs/synthetic-events.toml).
TEMPLATES = {
    "page_view": "{type}:{page_type}:{portal}",
    "scroll": "{type}:{page_type}:{pixels}",
    "search": "{type}:{category}",
    "purchase": "{type}:{item}",
}
BUCKETS = {"pixels": {"log_start": 250.0, "log_base": 2.0, "unit": "px"}}
COLUMNS = {"user": "user_id", "timestamp": "ts", "type": "event"}
DEPTH_EDGES = [0, 250, 500, 1000, 2000, 4000, 8000]  # the first six log-scale buckets of BUCKETS
PAGE_TYPES = ["home", "search_results", "category", "product", "cart", "checkout", "account", "help", "article",
              "video", "deals", "brand", "compare", "reviews", "wishlist", "stores"]
PORTALS = ["de", "fr", "uk", "it", "es", "nl", "pl", "se", "at", "ch", "be", "dk"]
ZIPF = 0.8
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAYS_MS = 28 * 24 * 3600 * 1000
MAX_EVENT_GAP_MS = 20 * 60 * 1000
MIN_SESSION_GAP_MS = 31 * 60 * 1000
SAME_MILLISECOND = 0.05


@dataclass(frozen=True)
class TokenSpace:
    """Every token with its kind, attributes and planted group."""

    kind: np.ndarray  # int8: 0 page_view, 1 scroll, 2 search, 3 purchase
    a: np.ndarray  # page type / page type / category / item
    b: np.ndarray  # portal / depth bucket / - / -
    group: np.ndarray
    popularity: np.ndarray  # within-group sampling weight
    successor: np.ndarray  # the planted next token

    def __len__(self) -> int:
        return self.kind.size


KINDS = ("page_view", "scroll", "search", "purchase")
#: Share of each kind among a group's popularity draws (page views most, purchases fewest).
KIND_SHARE = (0.5, 0.3, 0.12, 0.08)


def _name(names: list[str], i: int, prefix: str) -> str:
    return names[i] if i < len(names) else f"{prefix}_{i}"


def token_space(cfg: SyntheticEvents, rng: np.random.Generator) -> TokenSpace:
    depths = len(DEPTH_EDGES) - 1
    parts = [
        (0, np.repeat(np.arange(cfg.page_types), cfg.portals), np.tile(np.arange(cfg.portals), cfg.page_types)),
        (1, np.repeat(np.arange(cfg.page_types), depths), np.tile(np.arange(depths), cfg.page_types)),
        (2, np.arange(cfg.search_categories), np.zeros(cfg.search_categories, np.int64)),
        (3, np.arange(cfg.items), np.zeros(cfg.items, np.int64)),
    ]
    kind = np.concatenate([np.full(a.size, k, np.int8) for k, a, _ in parts])
    a = np.concatenate([a for _, a, _ in parts])
    b = np.concatenate([b for _, _, b in parts])
    group = np.empty(kind.size, np.int64)
    for k in range(len(KINDS)):  # each kind is shared out evenly, in a seeded order
        members = np.flatnonzero(kind == k)
        group[rng.permutation(members)] = np.arange(members.size) % cfg.segments
    popularity = np.empty(kind.size)
    successor = np.empty(kind.size, np.int64)
    for g in range(cfg.segments):
        for k, share in enumerate(KIND_SHARE):
            members = rng.permutation(np.flatnonzero((group == g) & (kind == k)))
            zipf = 1.0 / np.arange(1, members.size + 1) ** ZIPF
            popularity[members] = share * zipf / zipf.sum()
        members = np.flatnonzero(group == g)
        weights = popularity[members] / popularity[members].sum()
        successor[members] = rng.choice(members, size=members.size, p=weights)  # one fixed next token each
    return TokenSpace(kind, a, b, group, popularity, successor)


def token_strings(space: TokenSpace, cfg: SyntheticEvents) -> list[str]:
    """The token each planted token becomes under TEMPLATES and BUCKETS (see schemas.events)."""
    pixels = BUCKETS["pixels"]
    depth_labels = bucket_labels(log_edges(pixels["log_start"], pixels["log_base"]), pixels["unit"])[1:]
    out = []
    for kind, a, b in zip(space.kind, space.a, space.b):
        if kind == 0:
            out.append(f"page_view:{_name(PAGE_TYPES, a, 'page')}:{_name(PORTALS, b, 'portal')}")
        elif kind == 1:
            out.append(f"scroll:{_name(PAGE_TYPES, a, 'page')}:{depth_labels[b]}")
        elif kind == 2:
            out.append(f"search:cat_{a:02d}")
        else:
            out.append(f"purchase:sku_{a:04d}")
    return out


def _sampler(weights: np.ndarray, groups: np.ndarray, n_groups: int):
    """Draw a token per row from the weights restricted to the row's group (one searchsorted)."""
    order = np.lexsort((np.arange(weights.size), groups))
    sorted_groups = groups[order]
    within = np.zeros(weights.size)
    for g in range(n_groups):
        rows = sorted_groups == g
        cumulative = np.cumsum(weights[order][rows])
        within[rows] = cumulative / cumulative[-1]
    keys = sorted_groups + within  # increasing: group g's tokens cover (g, g + 1]

    def draw(row_groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        position = np.searchsorted(keys, row_groups + u, side="left")
        return order[np.minimum(position, order.size - 1)]

    return draw


def _sessions(cfg: SyntheticEvents, rng: np.random.Generator):
    sessions_per_user = 1 + rng.poisson(cfg.sessions_per_user - 1 if cfg.sessions_per_user > 1 else 0, cfg.users)
    session_user = np.repeat(np.arange(cfg.users), sessions_per_user)
    lengths = rng.geometric(1.0 / cfg.events_per_session, session_user.size)
    return session_user, lengths


def generate_columns(cfg: SyntheticEvents) -> tuple[dict[str, np.ndarray], TokenSpace, np.ndarray]:
    """(events as arrays of token index, user and time in ms, the token space, user segments)."""
    rng = np.random.default_rng(cfg.seed)
    space = token_space(cfg, rng)
    segment = rng.integers(0, cfg.segments, cfg.users)
    session_user, lengths = _sessions(cfg, rng)
    in_group = _sampler(space.popularity, space.group, cfg.segments)
    overall = _sampler(space.popularity, np.zeros(len(space), np.int64), 1)

    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.empty(offsets[-1], np.int64)
    own = segment[session_user]
    previous = np.full(session_user.size, -1)
    for step in range(int(lengths.max())):
        live = np.flatnonzero(lengths > step)
        u, pick = rng.random(live.size), rng.random(live.size)
        groups = own[live].copy()
        from_next = (u >= cfg.noise) & (u < cfg.noise + cfg.overlap)
        groups[from_next] = (groups[from_next] + 1) % cfg.segments
        chosen = in_group(groups, pick)
        noisy = u < cfg.noise
        chosen[noisy] = overall(np.zeros(noisy.sum(), np.int64), pick[noisy])
        prev = previous[live]
        follows = ~noisy & ~from_next & (rng.random(live.size) < cfg.follow) & (prev >= 0)
        follows &= space.group[np.maximum(prev, 0)] == own[live]
        chosen[follows] = space.successor[prev[follows]]
        tokens[offsets[live] + step] = chosen
        previous[live] = chosen

    # time: events 0-20 minutes apart within a session; a user's sessions in order, >= 31 minutes apart
    gaps = np.minimum(rng.exponential(45_000, tokens.size), MAX_EVENT_GAP_MS).astype(np.int64)
    # some events share the previous one's millisecond (to exercise the tie-break), never with the same
    # token and never twice in a row (odd positions only), so that only planted copies are exact duplicates
    position = np.arange(tokens.size) - np.repeat(offsets[:-1], lengths)
    differs = np.r_[True, tokens[1:] != tokens[:-1]]
    gaps[(rng.random(tokens.size) < SAME_MILLISECOND) & (position % 2 == 1) & differs] = 0
    gaps[offsets[:-1]] = 0
    within = _grouped_cumsum(gaps, lengths)
    duration = within[offsets[1:] - 1]
    first = np.r_[True, session_user[1:] != session_user[:-1]]
    pause = MIN_SESSION_GAP_MS + rng.exponential(DAYS_MS / max(cfg.sessions_per_user, 1) / 2, session_user.size)
    # from the previous session's start to this one's: its duration plus a pause; a user's first at a random offset
    step_ms = np.where(first, rng.uniform(0, DAYS_MS / 4, session_user.size), pause + np.r_[0, duration[:-1]])
    session_start = START_MS + _grouped_cumsum(step_ms.astype(np.int64), np.bincount(session_user))
    times = np.repeat(session_start, lengths) + within
    return {"token": tokens, "user": np.repeat(session_user, lengths), "ms": times}, space, segment


def _grouped_cumsum(values: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each group of consecutive rows."""
    total = np.cumsum(values)
    starts = np.r_[0, np.cumsum(group_sizes)[:-1]]
    return total - np.repeat(total[starts] - values[starts], group_sizes)


def _iso_times(ms: np.ndarray) -> pa.Array:
    """ISO-8601 UTC text with milliseconds, built from small dictionaries of its parts
    (2.5x faster than pyarrow's strftime on millions of rows)."""
    day, rest = np.divmod(ms, 86_400_000)
    first = int(day.min())
    days = [datetime.fromtimestamp(d * 86_400, UTC).strftime("%Y-%m-%dT") for d in range(first, int(day.max()) + 1)]
    hour, rest = np.divmod(rest, 3_600_000)
    minute, rest = np.divmod(rest, 60_000)
    second, milli = np.divmod(rest, 1000)
    everywhere = np.ones(ms.size, bool)
    return pc.binary_join_element_wise(
        _texts(days, day - first, everywhere), _texts([f"{i:02d}:" for i in range(24)], hour, everywhere),
        _texts([f"{i:02d}:" for i in range(60)], minute, everywhere),
        _texts([f"{i:02d}." for i in range(60)], second, everywhere),
        _texts([f"{i:03d}Z" for i in range(1000)], milli, everywhere), "",
    )


def _texts(values: list[str], indices: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Strings by dictionary lookup (fast for millions of rows), NULL where not ``valid``."""
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32), mask=~valid), pa.array(values)).cast(
        pa.string())


def generate(cfg: SyntheticEvents) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(events, token labels, user labels). Same settings -> identical tables."""
    columns, space, segment = generate_columns(cfg)
    rng = np.random.default_rng([cfg.seed, 1])
    token, user, ms = columns["token"], columns["user"], columns["ms"]
    kind = space.kind[token]
    lows, highs = np.array(DEPTH_EDGES[:-1]), np.array(DEPTH_EDGES[1:])
    depth = space.b[token]
    pixels = lows[depth] + (rng.random(token.size) * (highs[depth] - lows[depth])).astype(np.int64)  # in the bucket
    # one defect per dirty row, among those that apply to its kind: 0 no user, 1 unparsable time,
    # 2 unknown type, 3 no portal (page views), 4 negative depth (scrolls), 5 an exact copy
    defect = np.where(rng.random(token.size) < cfg.dirty, rng.integers(0, 6, token.size), -1)
    inapplicable = ((defect == 3) & (kind != 0)) | ((defect == 4) & (kind != 1))
    defect[inapplicable] = rng.integers(0, 3, int(inapplicable.sum()))
    copied = np.flatnonzero(defect == 5)
    index = np.concatenate([np.arange(token.size), copied])
    flaw = np.concatenate([np.where(defect == 5, -1, defect), np.full(copied.size, -1)])
    order = np.argsort(ms[index], kind="stable")  # a log in time order
    index, flaw = index[order], flaw[order]
    token, user, ms, pixels = token[index], user[index], ms[index], pixels[index]
    kind, a, b = space.kind[token], space.a[token], space.b[token]

    width = len(str(cfg.users - 1))
    user_names = [f"u{i:0{width}d}" for i in range(cfg.users)]
    times = pc.if_else(pa.array(flaw == 1), pa.scalar("yesterday"), _iso_times(ms))
    kinds = list(KINDS) + ["heartbeat"]
    pixels[flaw == 4] = -1
    pages = [_name(PAGE_TYPES, i, "page") for i in range(cfg.page_types)]
    portals = [_name(PORTALS, i, "portal") for i in range(cfg.portals)]
    events = pa.table({
        "user_id": _texts(user_names, user, flaw != 0),
        "ts": times,
        "event": _texts(kinds, np.where(flaw == 2, len(KINDS), kind), np.ones(token.size, bool)),
        "page_type": _texts(pages, a, kind <= 1),
        "portal": _texts(portals, b, (kind == 0) & (flaw != 3)),
        "pixels": pa.array(pixels, mask=kind != 1),
        "category": _texts([f"cat_{i:02d}" for i in range(cfg.search_categories)], a, kind == 2),
        "item": _texts([f"sku_{i:04d}" for i in range(cfg.items)], a, kind == 3),
    })
    strings = token_strings(space, cfg)
    tokens = pa.table({"token": strings, "group": pa.array(space.group), "kind": [KINDS[k] for k in space.kind]})
    users = pa.table({"user": user_names, "segment": pa.array(segment)})
    return events, tokens, users


def materialise(cfg: SyntheticEvents, inputs_dir: Path) -> Path:
    """Write the events (Parquet) and the planted labels (tokens.csv, users.csv) once; return the events path."""

    def events_and_labels():
        events, tokens, users = generate(cfg)
        return events, {"tokens": tokens, "users": users}

    return files.materialise("synthetic-events", cfg, inputs_dir, events_and_labels)
