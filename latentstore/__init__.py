"""latentstore: embeddings for users, items and events, served as a SQL feature store.

Read side: ``latentstore.connect(store_dir)`` opens a read-only DuckDB
connection on the store's current versions with vss loaded and the SQL
surface (views and macros) defined.
"""

__version__ = "0.1.0"


def connect(store, **kwargs):
    from latentstore.client import connect as _connect

    return _connect(store, **kwargs)


__all__ = ["connect", "__version__"]
