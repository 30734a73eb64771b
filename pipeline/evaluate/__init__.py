"""Measuring masks: confusion counts and scores (metrics), connected instances."""
