"""The one door to DuckDB: connections with the vss extension loaded offline."""

from __future__ import annotations

import importlib.resources
import platform
from pathlib import Path

import duckdb

from schemas.errors import StoreError


def vss_binary() -> Path:
    """The signed vss build shipped in the duckdb-extension-vss wheel (matches duckdb's version)."""
    root = importlib.resources.files("duckdb_extension_vss") / "extensions" / f"v{duckdb.__version__}"
    path = Path(str(root)) / "vss.duckdb_extension"
    if not path.is_file():
        raise StoreError(f"vss extension for duckdb {duckdb.__version__} not found at {path}; "
                         "install duckdb-extension-vss with the same version as duckdb")
    return path


def platform_tag() -> str:
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    system = {"Darwin": "osx"}.get(platform.system(), platform.system().lower())
    return f"{system}_{machine}"


def install_vss(extension_dir: Path) -> Path:
    """Copy vss into ``extension_dir`` (DuckDB's layout) so any client can ``LOAD vss`` offline."""
    target = extension_dir / f"v{duckdb.__version__}" / platform_tag() / "vss.duckdb_extension"
    if not target.is_file():
        extension_dir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(":memory:", config=_offline(extension_dir))
        try:
            con.execute(f"INSTALL '{vss_binary()}'")
        finally:
            con.close()
    return target


def _offline(extension_dir: Path | None) -> dict:
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if extension_dir is not None:
        config["extension_directory"] = str(extension_dir)
    return config


def connect(database: str | Path = ":memory:", read_only: bool = False, extension_dir: Path | None = None):
    """A connection with vss loaded and no network access for extensions."""
    con = duckdb.connect(str(database), read_only=read_only, config=_offline(extension_dir))
    con.execute(f"LOAD '{vss_binary()}'")
    return con
