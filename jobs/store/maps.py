"""A 2-D map of one entity's vectors, coloured by a label, as a PNG a person can read.

- Points: the keys with ``count >= min_count``, at most ``sample`` of them (a seeded sample),
  always including the most frequent keys.
- Projection: PCA (the top two principal components of the unit vectors: cosine geometry),
  or t-SNE (scikit-learn, initialised by PCA; slower, keeps local neighbourhoods).
- Colour: the label of each key; a multi-valued label ("Action|Adventure") counts as its
  first value. The 10 most common labels get their own colour, the others are "other",
  keys without a label "(no label)".
- The ``annotate`` most frequent keys are written next to their point (their title when a
  title column is given).

Drawn by ``latentstore plot`` on the read client's connection, and by the publish flow's
``publish.map`` straight from the version file it has just published (``draw_version``),
so both sides share it here, below them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.common.files import read_json
from jobs.store import duck
from jobs.store.duck import quote_identifier, quote_literal
from jobs.store.knn import unit, vectors_of
from jobs.store.labels import read_labels
from schemas.errors import StoreError
from schemas.store import StoreLayout

COLOURED_LABELS = 10
NO_LABEL, OTHER = "(no label)", "other"


def _labels(path: str, key_column: str, label_column: str | None,
            title_column: str | None) -> dict[str, tuple[str | None, str | None]]:
    """key -> (first label value, title) from a CSV or Parquet file."""
    columns = [c for c in (label_column, title_column) if c]
    options = ("--key-column", *(o for o, c in (("--label-column", label_column), ("--title-column", title_column))
                                 if c))
    out = {}
    for key, values in read_labels(path, key_column, columns, options).items():
        named = dict(zip(columns, values))
        label = named.get(label_column) if label_column else None
        out[key] = (label.split("|")[0].strip() if label else None, named.get(title_column) if title_column else None)
    return out


def project(vectors: np.ndarray, method: str, seed: int) -> np.ndarray:
    x = unit(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, svd_solver="full").fit_transform(x)  # signs fixed by sklearn: stable maps


def draw_version(store: StoreLayout, model: str, version: int, entity: str, out: Path, **options) -> dict:
    """Draw ``entity`` of one published version of ``model`` from its file (attached read-only); ``options``
    as for ``draw``."""
    tables = read_json(store.version_record(model, version))["entities"]
    if entity not in tables:
        raise StoreError(f"model {model!r} has no entity {entity!r}; entities: {', '.join(sorted(tables))}")
    con = duck.connect(":memory:")
    try:
        con.execute(f"ATTACH {quote_literal(str(store.version_file(model, version)))} AS version_file (READ_ONLY)")
        return draw(con, f"version_file.{quote_identifier(tables[entity]['table'])}", model, entity, out, **options)
    finally:
        con.close()


def draw(con, table: str, model: str, entity: str, out: Path, labels: str | None = None, key_column: str = "key",
         label_column: str | None = None, title_column: str | None = None, method: str = "pca",
         sample: int = 10_000, annotate: int = 12, seed: int = 42, min_count: int = 0) -> dict:
    """Write the map of ``table`` (a qualified, quoted table name on ``con``: ``model.entity``'s vectors) to
    ``out`` (PNG); returns what it drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = con.execute(f"SELECT key, vector, count FROM {table} WHERE count >= ? ORDER BY count DESC, key",
                       [min_count]).to_arrow_table()
    if rows.num_rows < 3:
        raise StoreError(f"{model}.{entity} has {rows.num_rows} keys with count >= {min_count}: too few to draw")
    keys, counts = rows.column("key").to_pylist(), rows.column("count").to_numpy()
    vectors = vectors_of(rows.column("vector"))
    annotate = min(annotate, sample)
    if len(keys) > sample:  # the most frequent keys always, then a seeded sample of the rest
        rest = np.random.default_rng(seed).choice(np.arange(annotate, len(keys)), sample - annotate, replace=False)
        chosen = np.concatenate([np.arange(annotate), np.sort(rest)])
        keys, counts, vectors = [keys[i] for i in chosen], counts[chosen], vectors[chosen]
    points = project(vectors, method, seed)
    known = _labels(labels, key_column, label_column, title_column) if labels else {}
    first = [known.get(key, (None, None))[0] or NO_LABEL for key in keys]
    common = [label for label, _ in _most_common(first) if label != NO_LABEL][:COLOURED_LABELS]
    shown = [label if label in common or label == NO_LABEL else OTHER for label in first]

    figure, axes = plt.subplots(figsize=(11, 8.5), dpi=130)
    palette = plt.get_cmap("tab10")
    order = common + [OTHER, NO_LABEL]
    for i, label in enumerate(order):
        mask = np.array([s == label for s in shown])
        if not mask.any():
            continue
        colour = palette(i) if i < len(common) else ("#bbbbbb" if label == OTHER else "#dddddd")
        axes.scatter(points[mask, 0], points[mask, 1], s=9, alpha=0.75, color=colour, linewidths=0,
                     label=f"{label} ({int(mask.sum())})")
    for i in range(min(annotate, len(keys))):
        name = known.get(keys[i], (None, None))[1] or keys[i]
        axes.annotate(name if len(name) <= 32 else name[:31] + "…", points[i], fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    colour_by = f"{label_column} (first value)" if label_column else "no label"
    which = f" with count >= {min_count}" if min_count else ""
    axes.set_title(f"{model}.{entity}: {method.upper()} of {len(keys)} vectors{which}, coloured by {colour_by}")
    axes.set_xticks([])
    axes.set_yticks([])
    if label_column:
        axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, markerscale=2)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return {"file": str(out), "points": len(keys), "method": method, "labels": len(common),
            "labelled": sum(1 for label in first if label != NO_LABEL)}


def _most_common(values: list[str]) -> list[tuple[str, int]]:
    from collections import Counter

    return sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))
