"""Signed model updates: the TUF repository, its keys and the model registry."""
