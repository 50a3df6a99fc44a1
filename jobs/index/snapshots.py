"""Finding snapshots in a store: reuse by content, the parent for a rebuild."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from jobs.common.files import atomic_write_text
from schemas.errors import StoreError
from schemas.snapshot import MANIFEST, Manifest
from schemas.store import StoreLayout

LATEST = "LATEST"


def read_manifest(snapshot_dir: Path) -> Manifest:
    path = snapshot_dir / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"not a snapshot (no {MANIFEST}): {snapshot_dir}") from None
    except ValidationError as exc:
        raise StoreError(f"{path}: invalid manifest: {exc.errors()[0]['msg']}") from None


def find_by_content(store: StoreLayout, dataset: str, content_key: str) -> Manifest | None:
    """A finished snapshot of the same input and config, preferring the latest."""
    root = store.dataset_dir(dataset)
    if not root.is_dir():
        return None
    latest = latest_id(store, dataset)
    matches = []
    for manifest_path in root.glob(f"*/{MANIFEST}"):
        manifest = read_manifest(manifest_path.parent)
        if manifest.content_key == content_key:
            matches.append(manifest)
    matches.sort(key=lambda m: (m.snapshot_id == latest, m.created_at))
    return matches[-1] if matches else None


def latest_id(store: StoreLayout, dataset: str) -> str | None:
    pointer = store.dataset_dir(dataset) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def set_latest(store: StoreLayout, dataset: str, snapshot_id: str) -> None:
    atomic_write_text(store.dataset_dir(dataset) / LATEST, snapshot_id + "\n")


def resolve_parent(store: StoreLayout, dataset: str, parent: str) -> Manifest | None:
    """``latest`` -> the dataset's latest snapshot (if any); ``none`` -> None; else that id."""
    if parent == "none":
        return None
    snapshot_id = latest_id(store, dataset) if parent == "latest" else parent
    if snapshot_id is None:
        return None
    directory = store.snapshot_dir(dataset, snapshot_id)
    if not directory.is_dir():
        raise StoreError(f"parent snapshot {snapshot_id!r} not found under {store.dataset_dir(dataset)}")
    return read_manifest(directory)
