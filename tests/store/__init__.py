"""Tests of the read side: current.sql, the client, SQL macros, read-only connections."""
