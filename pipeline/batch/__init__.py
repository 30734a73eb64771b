"""Scheduled runs: which catalog scans need segmenting, their manifests, locks and retries (flows/ sits on top)."""
