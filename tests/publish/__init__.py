"""Tests of the publish job: versions, gate, retention, compaction, crash safety, concurrent writers."""
