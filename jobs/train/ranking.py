"""Next-event ranking metrics: HR@k and NDCG@k of a held-out event among all tokens.

Rank of the target = tokens scored higher + tokens scored equal with a smaller
index (ties break like ``ORDER BY score DESC, index``). The unknown token 0 is
never a candidate (and never a target: such cases are dropped by
``Histories.cases``). With ``exclude_seen`` the tokens of the case's context are
not candidates either (the target stays one). A NaN score is no score: a NaN
candidate ranks below every other, a NaN target ranks last (a miss), so a model
without a usable context for a case, or a diverged one, never scores a hit.
HR@k: rank < k; NDCG@k (one relevant item): 1 / log2(rank + 2) when rank < k, else 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from jobs.train.sequences import Cases, Ragged
from schemas.vocab import UNKNOWN_INDEX

K = 10
#: Score rows per batch: at most this many cells of the [cases, tokens] score matrix at once.
_CELLS = 1 << 24


def ranks(scores: torch.Tensor, targets: torch.Tensor, seen: Ragged | None = None) -> torch.Tensor:
    """The 0-based rank of each row's target among its candidates (see the module docstring)."""
    scores = scores.float().clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets].clone()
    missing = torch.isnan(target_scores)
    scores = torch.nan_to_num(scores, nan=-math.inf)
    if seen is not None and seen.values.size:
        seen_rows = torch.from_numpy(np.repeat(np.arange(len(seen)), seen.lengths)).to(scores.device)
        scores[seen_rows, torch.from_numpy(seen.values).to(scores.device)] = -math.inf
    scores[:, UNKNOWN_INDEX] = -math.inf
    scores[rows, targets] = target_scores
    candidates = torch.arange(scores.shape[1], device=scores.device)
    higher = (scores > target_scores[:, None]).sum(1)
    tied_before = ((scores == target_scores[:, None]) & (candidates[None, :] < targets[:, None])).sum(1)
    return torch.where(missing, torch.full_like(higher, scores.shape[1]), higher + tied_before)


def evaluate(cases: Cases, score: Callable[[Ragged], torch.Tensor], n_tokens: int, exclude_seen: bool,
             k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k over ``cases``; ``score(contexts)`` gives [len(contexts), n_tokens] scores."""
    if not len(cases):
        return {}
    batch = max(1, _CELLS // max(n_tokens, 1))
    hits = ndcg = 0.0
    for start in range(0, len(cases), batch):
        rows = np.arange(start, min(start + batch, len(cases)))
        contexts = cases.contexts.take(rows)
        targets = torch.from_numpy(cases.targets[rows])
        with torch.no_grad():
            scores = score(contexts)
        rank = ranks(scores, targets.to(scores.device), contexts if exclude_seen else None).cpu().double()
        found = rank < k
        hits += float(found.sum())
        ndcg += float((1.0 / torch.log2(rank + 2.0))[found].sum())
    return {f"valid_hr_at_{k}": hits / len(cases), f"valid_ndcg_at_{k}": ndcg / len(cases), "valid_cases": len(cases),
            "valid_unknown_targets": cases.unknown_targets}
