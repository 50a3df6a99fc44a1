"""The publish stage: vectors -> immutable DuckDB version files, pointers, registry, current.sql."""
