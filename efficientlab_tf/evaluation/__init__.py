"""Held-out evaluation through the update routine."""
