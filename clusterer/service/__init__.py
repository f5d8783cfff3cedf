"""The service layer: clustering runs and incremental upkeep over a store, and the result types."""
