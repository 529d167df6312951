"""EfficientLab: encoder, decoder layers, loss and metrics (no meta-learning)."""
