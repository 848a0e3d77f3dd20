"""Unit tests: pure code, no database and no server process."""
