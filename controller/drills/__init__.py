"""Fault injection for drills and fault tests."""
