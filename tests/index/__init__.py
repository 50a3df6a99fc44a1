"""Tests of the index job: validation, quarantine, formats, vocabularies, Spark clusters."""
