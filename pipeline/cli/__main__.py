"""``python -m pipeline.cli``."""

from pipeline.cli import app

app()
