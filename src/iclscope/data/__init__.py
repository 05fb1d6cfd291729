"""Data: synthetic sequences, tasks and feature banks."""
