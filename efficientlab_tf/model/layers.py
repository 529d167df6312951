"""Decoder building blocks of EfficientLab (paper section 4, Figure 1).

`BatchNorm` makes the batch-norm policy a property of the layer,
`ResidualSkipDecoder` (RSD) is the paper's decoder block, and the MTL
convolutions carry meta-transfer learning's scaling and shifting.
"""

import keras
from keras import ops

_PACKAGE = "efficientlab_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalization with a fixed choice of statistics.

    With `batch_stats=False` it is Keras' layer unchanged: batch statistics
    in training, moving averages in inference. With `batch_stats=True` it
    always normalises with the statistics of the batch it sees (and still
    updates the moving averages while training), so prediction with
    `training=False` turns dropout off but keeps batch statistics: the
    transductive setting of most few-shot segmentation code.
    """

    def __init__(self, batch_stats=False, **kwargs):
        super().__init__(**kwargs)
        self.batch_stats = bool(batch_stats)

    def call(self, inputs, training=None, mask=None):
        if self.batch_stats and not training:
            # Batch statistics without touching the moving averages: the
            # moments are computed here rather than via training=True.
            return self._batch_normalize(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _batch_normalize(self, inputs):
        ops = keras.ops
        # Moments in float32 under a mixed policy (as Keras' own layer).
        x = ops.cast(inputs, "float32")
        axes = [i for i in range(len(x.shape)) if i != self.axis % len(x.shape)]
        mean, var = ops.moments(x, axes=axes, keepdims=True)
        shape = [1] * len(x.shape)
        shape[self.axis] = x.shape[self.axis]
        out = (x - mean) * ops.rsqrt(var + self.epsilon)
        if self.scale:
            out = out * ops.reshape(self.gamma, shape)
        if self.center:
            out = out + ops.reshape(self.beta, shape)
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "batch_stats": self.batch_stats}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualSkipDecoder(keras.layers.Layer):
    """Residual skip decoder (RSD) block.

    Three parallel branches over the input - a 1x1 convolution, a 3x3
    convolution with dilation 2 and global average pooling (projected by a
    1x1 convolution and broadcast back) - are concatenated and fused by a
    3x3 convolution with `filters` outputs. A residual connection (1x1
    projection of the input when the widths differ) goes around the
    convolutions; batch norm follows every convolution.

    Input: float32 [B, H, W, C] -> output: float32 [B, H, W, filters].
    """

    def __init__(self, filters=112, residual=True, batch_stats=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.residual = bool(residual)
        self.batch_stats = bool(batch_stats)

        def conv(kernel, dilation=1, name=None):
            return keras.layers.Conv2D(
                self.filters, kernel, padding="same", dilation_rate=dilation,
                use_bias=False, name=name,
            )

        def bn(name):
            return BatchNorm(batch_stats=self.batch_stats, name=name)

        self.branch1 = conv(1, name="branch1x1")
        self.branch1_bn = bn("branch1x1_bn")
        self.branch3 = conv(3, dilation=2, name="branch3x3_d2")
        self.branch3_bn = bn("branch3x3_d2_bn")
        self.pool_proj = conv(1, name="pool_proj")
        self.pool_bn = bn("pool_bn")
        self.fuse = conv(3, name="fuse3x3")
        self.fuse_bn = bn("fuse3x3_bn")
        self.shortcut = None
        self.shortcut_bn = None

    def build(self, input_shape):
        channels = input_shape[-1]
        self.branch1.build(input_shape)
        self.branch1_bn.build(input_shape[:-1] + (self.filters,))
        self.branch3.build(input_shape)
        self.branch3_bn.build(input_shape[:-1] + (self.filters,))
        pooled = (input_shape[0], 1, 1, channels)
        self.pool_proj.build(pooled)
        self.pool_bn.build(pooled[:-1] + (self.filters,))
        fused = input_shape[:-1] + (3 * self.filters,)
        self.fuse.build(fused)
        self.fuse_bn.build(input_shape[:-1] + (self.filters,))
        if self.residual and channels != self.filters:
            self.shortcut = keras.layers.Conv2D(
                self.filters, 1, use_bias=False, name="shortcut"
            )
            self.shortcut.build(input_shape)
            self.shortcut_bn = BatchNorm(
                batch_stats=self.batch_stats, name="shortcut_bn"
            )
            self.shortcut_bn.build(input_shape[:-1] + (self.filters,))

    def call(self, inputs, training=None):
        ops = keras.ops
        relu = keras.activations.relu
        a = relu(self.branch1_bn(self.branch1(inputs), training=training))
        b = relu(self.branch3_bn(self.branch3(inputs), training=training))
        pooled = ops.mean(inputs, axis=(1, 2), keepdims=True)
        c = relu(self.pool_bn(self.pool_proj(pooled), training=training))
        c = ops.broadcast_to(c, ops.shape(a))
        x = self.fuse_bn(
            self.fuse(ops.concatenate([a, b, c], axis=-1)), training=training
        )
        if self.residual:
            shortcut = inputs
            if self.shortcut is not None:
                shortcut = self.shortcut_bn(
                    self.shortcut(inputs), training=training
                )
            x = x + shortcut
        return relu(x)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "residual": self.residual,
            "batch_stats": self.batch_stats,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling (DeepLabv3; the decoder head Auto-DeepLab
    uses), for paper Table 1's "EfficientNet + Auto-DeepLab decoder" row.

    Five parallel branches over the input - a 1x1 convolution, three 3x3
    convolutions with dilation `rates` and global average pooling (projected
    by a 1x1 convolution and broadcast back) - each with batch norm and
    ReLU, concatenated and projected by a 1x1 convolution to `filters`.

    Input: float32 [B, H, W, C] -> output: float32 [B, H, W, filters].
    """

    def __init__(self, filters=112, rates=(6, 12, 18), batch_stats=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.rates = tuple(int(r) for r in rates)
        self.batch_stats = bool(batch_stats)

        def conv(kernel, dilation=1, name=None):
            return keras.layers.Conv2D(
                self.filters, kernel, padding="same", dilation_rate=dilation,
                use_bias=False, name=name,
            )

        self.convs = [conv(1, name="aspp_1x1")] + [
            conv(3, dilation=r, name=f"aspp_3x3_r{r}") for r in self.rates]
        self.pool_proj = conv(1, name="aspp_pool_proj")
        self.project = conv(1, name="aspp_project")
        self.bns = [BatchNorm(batch_stats=self.batch_stats, name=f"aspp_bn{i}")
                    for i in range(len(self.convs) + 2)]

    def build(self, input_shape):
        out = input_shape[:-1] + (self.filters,)
        for conv, bn in zip(self.convs, self.bns):
            conv.build(input_shape)
            bn.build(out)
        pooled = (input_shape[0], 1, 1, input_shape[-1])
        self.pool_proj.build(pooled)
        self.bns[-2].build(pooled[:-1] + (self.filters,))
        self.project.build(input_shape[:-1] + ((len(self.convs) + 1) * self.filters,))
        self.bns[-1].build(out)

    def call(self, inputs, training=None):
        ops = keras.ops
        relu = keras.activations.relu
        branches = [relu(bn(conv(inputs), training=training))
                    for conv, bn in zip(self.convs, self.bns)]
        pooled = ops.mean(inputs, axis=(1, 2), keepdims=True)
        pooled = relu(self.bns[-2](self.pool_proj(pooled), training=training))
        branches.append(ops.broadcast_to(pooled, ops.shape(branches[0])))
        x = self.project(ops.concatenate(branches, axis=-1))
        return relu(self.bns[-1](x, training=training))

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "rates": list(self.rates),
            "batch_stats": self.batch_stats,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InnerRates(keras.layers.Layer):
    """Learned per-variable multipliers of the inner learning rate (Meta-SGD,
    Li et al. 2017, per layer as MAML++'s LSLR, Antoniou et al. 2019).

    Identity on its input. It holds `log_rates`, one per trainable variable
    of the network built before it (0 = multiplier 1), inside the network so
    checkpoints and SavedModels carry them. Keras does not train them
    (trainable=False): the update routine multiplies omega's lr by
    exp(log_rates) per variable, and meta-training moves them with their own
    first-order rule (meta/learner.py).
    """

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def build(self, input_shape):
        self.log_rates = self.add_weight(
            shape=(self.count,), initializer="zeros", trainable=False,
            name="log_rates", dtype="float32")

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "count": self.count}


def _mtl_shift_and_activate(layer, outputs):
    """outputs + (b + Phi_S2), then the layer's activation (channels last)."""
    shift = layer.mtl_shift + layer.bias if layer.use_bias else layer.mtl_shift
    outputs = ops.add(outputs, ops.reshape(shift, (1, 1, 1, -1)))
    return outputs if layer.activation is None else layer.activation(outputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MTLConv2D(keras.layers.Conv2D):
    """A convolution with meta-transfer learning's scaling and shifting
    (Sun et al., "Meta-Transfer Learning for Few-Shot Learning", CVPR 2019;
    the authors' `_ConvNdMtl`): y = (W (.) Phi_S1) * x + (b + Phi_S2), with
    one scale per kernel, Phi_S1 of shape [1, 1, in, out] against the kernel
    [kh, kw, in, out], and one shift per output channel, Phi_S2 [out];
    initialised to 1 and 0, so the layer starts as the plain convolution.
    Its weights are [kernel, (bias,) mtl_scale, mtl_shift]."""

    def build(self, input_shape):
        super().build(input_shape)
        self.mtl_scale = self.add_weight(
            shape=(1, 1) + tuple(self.kernel.shape[2:]), initializer="ones",
            name="mtl_scale")
        self.mtl_shift = self.add_weight(shape=(self.filters,),
                                         initializer="zeros", name="mtl_shift")

    def call(self, inputs):
        return _mtl_shift_and_activate(
            self, self.convolution_op(inputs, self.kernel * self.mtl_scale))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MTLDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`MTLConv2D` for a depthwise convolution: its kernel [kh, kw, in, m]
    holds one kernel per channel, so Phi_S1 [1, 1, in, m] is one scale per
    channel, and Phi_S2 one shift per output channel [in * m]."""

    def build(self, input_shape):
        super().build(input_shape)
        self.mtl_scale = self.add_weight(
            shape=(1, 1) + tuple(self.kernel.shape[2:]), initializer="ones",
            name="mtl_scale")
        self.mtl_shift = self.add_weight(
            shape=(int(self.kernel.shape[2] * self.kernel.shape[3]),),
            initializer="zeros", name="mtl_shift")

    def call(self, inputs):
        outputs = ops.depthwise_conv(
            inputs, self.kernel * self.mtl_scale, strides=self.strides,
            padding=self.padding, dilation_rate=self.dilation_rate,
            data_format=self.data_format)
        return _mtl_shift_and_activate(self, outputs)


MTL_LAYERS = {keras.layers.Conv2D: MTLConv2D,
              keras.layers.DepthwiseConv2D: MTLDepthwiseConv2D}


def _mtl_layers(layer):
    return [sub for sub in layer._flatten_layers(include_self=True, recursive=True)
            if isinstance(sub, tuple(MTL_LAYERS.values()))]


def mtl_variables(layer):
    """Phi_S1 and Phi_S2 of every MTL convolution in `layer` (a model)."""
    return [v for sub in _mtl_layers(layer) for v in (sub.mtl_scale, sub.mtl_shift)]


def reset_mtl(layer):
    """Puts every Phi_S1 back to 1 and Phi_S2 to 0: the plain network,
    where MTL's meta-transfer starts."""
    for sub in _mtl_layers(layer):
        sub.mtl_scale.assign(ops.ones(sub.mtl_scale.shape, sub.mtl_scale.dtype))
        sub.mtl_shift.assign(ops.zeros(sub.mtl_shift.shape, sub.mtl_shift.dtype))
