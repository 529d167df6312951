"""Package data: benchmark class lists (FSS-1000 test classes, FP-k classes)."""

import importlib.resources


def read_class_list(name):
    """Class names from a shipped list, e.g. 'fss1000_test_classes.txt'."""
    text = importlib.resources.files(__name__).joinpath(name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]
