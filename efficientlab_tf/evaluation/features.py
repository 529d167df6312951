"""What an initialization's features do without gradient steps.

Two measurements on the penultimate features of EfficientLab (the decoder
output that the last 1x1 convolution classifies, Goldblum et al.'s "feature
extractor" output):

* the *prototype head*: a no-gradient adaptation procedure (masked average
  pooling of the support features into a foreground and a background
  prototype, then per query pixel the cosine similarity to each; PANet,
  Wang et al., ICCV 2019, without its alignment loss), scored by the same
  binary IoU as every other row;
* the *feature-clustering ratio* R_FC of Goldblum et al. ("Unraveling
  Meta-Learning: Understanding Feature Representations for Few-Shot Tasks",
  ICML 2020, eq. 4) over the two classes of a segmentation task
  (`clustering_ratio`), averaged over meta-test tasks.
"""

import keras
import numpy as np
import tensorflow as tf

from efficientlab_tf.model.efficientlab import HEAD_LAYER
from efficientlab_tf.model.metrics import binary_iou
from efficientlab_tf.evaluation.protocol import mean_ci95

# PANet's scale of the cosine similarities before the softmax.
PROTOTYPE_TEMPERATURE = 20.0
# Keeps the means of an image without foreground (or background) finite.
_EPS = 1e-6


def feature_model(model):
    """keras.Model sharing `model`'s layers: images -> the input of the last
    1x1 convolution (`head_logits`), [B, h, w, C] at the decoder resolution."""
    try:
        head = model.get_layer(HEAD_LAYER)
    except ValueError:
        raise ValueError(f"the feature measurements need a layer named "
                         f"{HEAD_LAYER!r} in {model.name!r}.") from None
    return keras.Model(model.inputs, head.input, name=f"{model.name}_features")


def resize_masks(masks, size):
    """Masks [B, S, S(, 1)] -> float32 [B, h, w] foreground fractions of each
    feature cell (area averaging, so a cell half covered counts 0.5)."""
    masks = tf.cast(masks, tf.float32)
    if masks.shape.rank == 3:
        masks = masks[..., None]
    masks = tf.where(masks > 1.0, 0.0, masks)  # 255 (ignored) as background.
    return tf.image.resize(masks, size, method="area")[..., 0]


def masked_means(features, weights):
    """Per-image weighted mean embedding: [B, h, w, C], [B, h, w] -> [B, C]."""
    w = weights[..., None]
    return (tf.reduce_sum(features * w, axis=[1, 2])
            / (tf.reduce_sum(w, axis=[1, 2]) + _EPS))


def clustering_ratio(features, masks, class_ids=None, num_classes=1):
    """Goldblum et al.'s feature-clustering ratio R_FC for segmentation.

    R_FC = (C / N) sum_{i,j} ||f(x_ij) - mu_i||^2 / sum_i ||mu_i - mu||^2

    (Goldblum et al. 2020, eq. 4: within-class over between-class variance;
    C classes, N examples, mu_i the class means, mu their mean). For
    segmentation every image j contributes two examples: its foreground-
    pixel mean embedding f_j, of its class c_j, and its background-pixel
    mean embedding b_j, of a shared "background" class (mask-weighted means
    of the pixel features, `masked_means`). For one task (all images of one
    class; meta-training's inner loop, meta-test tasks) C = 2, N = 2n and
    mu = (mu_f + mu_b) / 2:

    R_FC = (1/n) sum_j (||f_j - mu_f||^2 + ||b_j - mu_b||^2)
           / (||mu_f - mu||^2 + ||mu_b - mu||^2)

    As a loss term it pulls each image's foreground mean toward its class's
    mean and pushes the class means (and the background) apart. Joint
    training mixes classes in a minibatch: `class_ids` names each image's
    class so the foregrounds of different classes are different classes.

    Args:
        features: float [n, h, w, C] pixel embeddings of n images.
        masks: [n, h, w] foreground weights in [0, 1] at the same resolution.
        class_ids: int [n] class of each image's foreground, in
            [0, num_classes); None: all 0 (one task).
        num_classes: Static bound on the foreground classes.

    Returns:
        Scalar float32; classes absent from the batch do not count.
    """
    features = tf.cast(features, tf.float32)
    masks = tf.cast(masks, tf.float32)
    n = tf.shape(features)[0]
    if class_ids is None:
        class_ids = tf.zeros([n], tf.int32)
    class_ids = tf.cast(class_ids, tf.int32)
    examples = tf.concat([masked_means(features, masks),
                          masked_means(features, 1.0 - masks)], 0)
    labels = tf.concat([class_ids, tf.fill([n], num_classes)], 0)
    segments = num_classes + 1
    counts = tf.math.unsorted_segment_sum(tf.ones_like(labels, tf.float32),
                                          labels, segments)
    present = tf.cast(counts > 0, tf.float32)
    means = (tf.math.unsorted_segment_sum(examples, labels, segments)
             / tf.maximum(counts, 1.0)[:, None])
    c = tf.reduce_sum(present)
    mu = tf.reduce_sum(means * present[:, None], 0) / c
    within = tf.reduce_sum(tf.square(examples - tf.gather(means, labels)))
    between = tf.reduce_sum(present * tf.reduce_sum(tf.square(means - mu), -1))
    num_examples = tf.cast(2 * n, tf.float32)
    return (c / num_examples) * within / (between + _EPS)


def prototype_probabilities(support_features, support_masks, query_features,
                            temperature=PROTOTYPE_TEMPERATURE):
    """Foreground probability of every query pixel from the prototypes.

    p_f and p_b are the mask-weighted means of all support pixels' features
    (masked average pooling); a query pixel's probability is
    softmax(temperature * [cos(x, p_b), cos(x, p_f)])[1].

    Args:
        support_features: [n, h, w, C]; support_masks: [n, h, w] in [0, 1].
        query_features: [q, h, w, C].

    Returns:
        float32 [q, h, w].
    """
    support_features = tf.cast(support_features, tf.float32)
    query_features = tf.cast(query_features, tf.float32)
    w = tf.cast(support_masks, tf.float32)[..., None]
    p_f = tf.reduce_sum(support_features * w, [0, 1, 2]) / (tf.reduce_sum(w) + _EPS)
    p_b = (tf.reduce_sum(support_features * (1.0 - w), [0, 1, 2])
           / (tf.reduce_sum(1.0 - w) + _EPS))
    q = tf.math.l2_normalize(query_features, axis=-1)
    cos_f = tf.reduce_sum(q * tf.math.l2_normalize(p_f), axis=-1)
    cos_b = tf.reduce_sum(q * tf.math.l2_normalize(p_b), axis=-1)
    return tf.sigmoid(temperature * (cos_f - cos_b))


def prototype_eval_fn(model):
    """An `eval_fn` (the protocol's signature) of the prototype head: no
    weight moves, lr/steps/seed are ignored; the query probabilities are
    upsampled bilinearly to the image size and scored by binary IoU."""
    features = feature_model(model)

    @tf.function(reduce_retracing=True)
    def eval_fn(support_images, support_masks, query_images, query_masks,
                lr, steps, seed):
        del lr, steps, seed
        fs = features(support_images, training=False)
        fq = features(query_images, training=False)
        probs = prototype_probabilities(
            fs, resize_masks(support_masks, fs.shape[1:3]), fq)
        size = query_images.shape[1:3]
        probs = tf.image.resize(probs[..., None], size, method="bilinear")[..., 0]
        return binary_iou(query_masks, probs), probs

    return eval_fn


def clustering_scores(model, tasks):
    """R_FC of every task (support and query images together) under the
    model's current weights: a list of floats, one per task."""
    features = feature_model(model)

    @tf.function(reduce_retracing=True)
    def ratio(images, masks):
        f = features(images, training=False)
        return clustering_ratio(f, resize_masks(masks, f.shape[1:3]))

    return [float(ratio(tf.concat([t.support_images, t.query_images], 0),
                        tf.concat([tf.cast(t.support_masks, tf.float32),
                                   tf.cast(t.query_masks, tf.float32)], 0)))
            for t in tasks]


def clustering_summary(model, tasks):
    """{"clustering_ratio": mean, "clustering_ci95": CI,
    "clustering_per_task": [...]} of `clustering_scores`."""
    scores = clustering_scores(model, tasks)
    mean, ci = mean_ci95(scores)
    return {"clustering_ratio": float(mean), "clustering_ci95": float(ci),
            "clustering_per_task": [float(s) for s in np.asarray(scores)]}
