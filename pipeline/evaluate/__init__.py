"""Measuring masks: confusion counts and scores (metrics), mask-vs-reference reports, connected instances."""
