"""Reusable corpora of input files for reliability tests (io, CLI, web app)."""
