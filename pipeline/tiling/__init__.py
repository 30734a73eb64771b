"""The Dask fan-outs over the work store: an input streamed into it window by window, its labels polygonised.

The readers and writers they run per window live in :mod:`pipeline.io` (which never schedules); these
modules only submit one task per window and gather the results.
"""
