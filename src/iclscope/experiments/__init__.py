"""Experiments: each a function of a config that writes a results folder."""
