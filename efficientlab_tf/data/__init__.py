"""Few-shot segmentation tasks as fixed-shape tensors."""
