"""clusterer package."""
