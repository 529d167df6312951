"""EfficientNet-Lite0 in Keras (the network; weights: `pretrained/lite.py`).

EfficientNet-Lite0 (Tan & Le's mobile variant) is EfficientNet-B0 without
squeeze-excitation, with ReLU6 instead of swish and a fixed 32-filter stem
and 1280-filter head: 4,694,024 parameters with its 1000-class head. Layer
names follow Keras' EfficientNet applications (`stem_conv`,
`block2a_expand_conv`, `block2b_drop`, `top_conv`, ...), so the encoder code
finds the same stage endpoints (paper stage s = Keras `block{s-1}`).
Convolutions use TensorFlow "SAME" padding and batch-norm epsilon 1e-3, the
conventions under which the converted ImageNet weights reproduce the
PyTorch network. Inputs are RGB in [0, 255]; the first layer normalises them
to (x - 127) / 128 (`INPUT_MEAN` / `INPUT_STD`).
"""

import string

import keras

# Input normalisation on the 0-255 scale: TF-Lite's (x - 127) / 128, the
# convention of the original TensorFlow EfficientNet-Lite checkpoints these
# weights come from. Measured on realfss-train (README "EfficientNet-Lite0"):
# top-5 kind hit rate 0.798 vs 0.784 with ImageNet mean/std, top-1 0.627 vs
# 0.602, mean log-probability of the right kind -1.67 vs -1.84.
INPUT_MEAN = (127.0, 127.0, 127.0)
INPUT_STD = (128.0, 128.0, 128.0)

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99

# (kernel, stride, expand ratio, input filters, output filters, repeats)
# for the seven MBConv stages (paper stages 2-8).
BLOCKS = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280


def _bn(name):
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name
    )


def _relu6(name):
    return keras.layers.ReLU(max_value=6.0, name=name)


def block_names():
    """Keras prefixes of the 16 MBConv blocks in order ("block1a_", ...)."""
    names = []
    for stage, (*_, repeats) in enumerate(BLOCKS, start=1):
        names += [f"block{stage}{string.ascii_lowercase[r]}_" for r in range(repeats)]
    return names


def efficientnet_lite0(include_top=True, input_shape=(224, 224, 3),
                       drop_connect_rate=0.2, dropout_rate=0.2, classes=1000):
    """Builds EfficientNet-Lite0 (random weights; see `load_imagenet_weights`).

    Args:
        include_top: Append global pooling, dropout and the 1000-way dense
            layer (logits, no softmax).
        input_shape: [H, W, 3] of RGB inputs in [0, 255].
        drop_connect_rate: Largest stochastic-depth rate (last block);
            block b of n uses rate * b / n, as in Keras' EfficientNet.
        dropout_rate: Dropout before the classifier.
        classes: Classifier outputs.

    Returns:
        keras.Model named "efficientnet_lite0".
    """
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = keras.layers.Normalization(
        mean=list(INPUT_MEAN), variance=[s * s for s in INPUT_STD],
        name="normalization",
    )(inputs)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same",
                            use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)
    prefixes = block_names()
    index = 0
    for kernel, stride, expand, filters_in, filters_out, repeats in BLOCKS:
        for r in range(repeats):
            p = prefixes[index]
            rate = drop_connect_rate * index / len(prefixes)
            index += 1
            block_in = x
            f_in = filters_in if r == 0 else filters_out
            s = stride if r == 0 else 1
            if expand != 1:
                x = keras.layers.Conv2D(f_in * expand, 1, padding="same",
                                        use_bias=False, name=p + "expand_conv")(x)
                x = _bn(p + "expand_bn")(x)
                x = _relu6(p + "expand_activation")(x)
            x = keras.layers.DepthwiseConv2D(kernel, strides=s, padding="same",
                                             use_bias=False, name=p + "dwconv")(x)
            x = _bn(p + "bn")(x)
            x = _relu6(p + "activation")(x)
            x = keras.layers.Conv2D(filters_out, 1, padding="same",
                                    use_bias=False, name=p + "project_conv")(x)
            x = _bn(p + "project_bn")(x)
            if s == 1 and f_in == filters_out:
                if rate > 0:
                    x = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1),
                                             name=p + "drop")(x)
                x = keras.layers.Add(name=p + "add")([x, block_in])
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False,
                            name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _relu6("top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = keras.layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")
