"""What is written beside a mask: the JSON/CSV report, the HTML page, viewer label files, batch summaries,
and the mask-vs-reference report of ``pipeline evaluate`` (compare.py)."""
