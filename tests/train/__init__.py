"""Tests of training: model families, the loop, precision, data parallel."""
