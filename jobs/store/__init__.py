"""Store access: what the publish job (the writer) and the read client (latentstore) both need.

The DuckDB door (``duck``), exact cosine top-k (``knn``), the registry's reads
(``registry``), the current.sql renderer (``current_sql``) and the 2-D map of an
entity's vectors (``maps``). It imports only jobs.common and schemas, so the
writer and the reader depend on it and never on each other. Importing this
package loads nothing heavy; ``duck`` loads DuckDB.
"""
