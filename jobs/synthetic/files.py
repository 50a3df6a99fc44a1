"""Generated inputs are written once under the store's inputs/, named by a hash of their settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from jobs.common.files import atomic_write_text
from jobs.common.hashing import stable_hash


def materialise(prefix: str, settings: BaseModel, inputs_dir: Path,
                generate: Callable[[], tuple[pa.Table, dict[str, pa.Table]]]) -> Path:
    """Write ``<prefix>-<hash>.parquet`` and its labels (``<prefix>-<hash>.<name>.csv``) once; return the data path.

    The file name is a hash of the settings, so a rerun reuses the file and the
    index stage sees the same fingerprint. The Parquet file is written last and
    renamed into place, so its presence means the labels are there too.
    """
    name = f"{prefix}-{stable_hash(settings.model_dump(mode='json'), 12)}"
    target = inputs_dir / f"{name}.parquet"
    if target.exists():
        return target
    data, labels = generate()
    inputs_dir.mkdir(parents=True, exist_ok=True)
    for label, table in labels.items():
        atomic_write_text(inputs_dir / f"{name}.{label}.csv", table.to_pandas().to_csv(index=False))
    tmp = target.with_suffix(".parquet.tmp")
    pq.write_table(data, tmp, row_group_size=1 << 20)
    tmp.replace(target)
    return target
