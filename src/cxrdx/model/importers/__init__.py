"""Importers of public checkpoints, one file per source layout."""
