"""Meta-learning around one update routine (meta/adapter.py)."""
