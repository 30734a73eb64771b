"""Readers and writers: the only modules that touch input and output files."""
