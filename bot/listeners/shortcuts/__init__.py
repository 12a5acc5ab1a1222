"""Shortcuts (message actions)."""
