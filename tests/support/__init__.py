"""Helpers shared by the tests of every tier: plain functions and constants, no fixtures."""
