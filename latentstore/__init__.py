"""latentstore: embeddings for users, items and events, served as a SQL feature store.

Read side: ``latentstore.connect(store_dir)`` opens a read-only DuckDB
connection on the store's current versions with vss loaded and the SQL
surface (views and macros) defined; ``latentstore.open_store(store_dir)`` adds
the queries a downstream job needs (top-k, batch top-k, feature joins,
analogies) on one persistent connection.
"""

__version__ = "0.1.0"


def connect(store, **kwargs):
    """A read-only DuckDB connection on the store (see latentstore.client.connect)."""
    from latentstore.client import connect as _connect

    return _connect(store, **kwargs)


def open_store(store, **kwargs):
    """Queries on one persistent connection: similar, nearest, similar_many, features, analogy (latentstore.store)."""
    from latentstore.store import open_store as _open

    return _open(store, **kwargs)


__all__ = ["connect", "open_store", "__version__"]
