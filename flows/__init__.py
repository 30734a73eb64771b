"""Prefect flows over the ``pipeline`` library: orchestration only, no segmentation logic.

``pipeline/`` never imports Prefect; everything here is a thin task or flow around a library
function, so the same work runs from the CLI, a test, or a scheduled deployment.
"""
