"""Tests of the command line: exit codes and error messages."""
