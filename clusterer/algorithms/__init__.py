"""Clustering algorithms as pure functions: arrays in, lists and arrays out; no database."""
