"""efficientlab_tf: meta-learned initializations for few-shot segmentation.

A TensorFlow 2 / Keras 3 reimplementation of "Meta-Learning Initializations
for Image Segmentation" (Hendryx, Leach, Hein, Morrison): the EfficientLab
network, FOMAML and Reptile meta-training around one update routine, and the
evaluation that goes with them.
"""

__version__ = "0.1.0"
