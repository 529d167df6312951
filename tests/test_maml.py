"""Second-order MAML: the meta-gradient through the inner loop against
central finite differences, and against the first-order direction."""

import keras
import numpy as np
import tensorflow as tf

from efficientlab_tf import segmentation
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.config import Omega
from efficientlab_tf.meta import fomaml
from efficientlab_tf.meta import maml
from efficientlab_tf.data.tasks import TaskBatch
from efficientlab_tf.meta import inner_opt
from efficientlab_tf.meta.adapter import AdaptState
from efficientlab_tf.meta.adapter import Adapter
from efficientlab_tf.meta.fomaml import D_VAL_SEED_TAG
from efficientlab_tf.meta.learner import MetaLearner
from tests import helpers

LR = 0.5
STEPS = 3  # Two steps on D_tr, the meta-loss on D_val.
TAIL = 2
SEED = tf.constant([3, 9])


def smooth_loss(masks, logits, weights):
    """Pixel cross entropy (smooth: finite differences stay accurate)."""
    del weights
    labels = tf.cast(masks[..., 0], tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels, logits))


def setup():
    """A small smooth network (tanh, no batch norm) and a 4-shot task of
    unit-scale inputs, so central differences in float32 are accurate to
    well under a percent."""
    tf.keras.utils.set_random_seed(1)
    images = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="tanh")(images)
    logits = keras.layers.Conv2D(2, 1)(x)
    model = keras.Model(images, logits)
    adapter = Adapter(model, smooth_loss, inner_opt.SGD(), batch_size=2,
                      in_place=False)
    rng = np.random.RandomState(2)
    x = tf.constant(rng.normal(size=(4, 8, 8, 3)).astype(np.float32))
    y = tf.constant((rng.uniform(size=(4, 8, 8, 1)) > 0.5).astype(np.float32))
    return model, adapter, TaskBatch(x, y, x[:0], y[:0])


def meta_loss(adapter, task, theta, start):
    """L_val(U(theta)) computed forward only (the finite-difference side)."""
    n = task.support_images.shape[0]
    state = AdaptState(theta, start.stats, ())
    theta_tr = adapter.adapt_unrolled(
        task.support_images[:n - TAIL], task.support_masks[:n - TAIL], LR,
        STEPS - 1, SEED, state)
    return float(adapter.loss(
        theta_tr, task.support_images[n - TAIL:], task.support_masks[n - TAIL:],
        tf.random.experimental.stateless_fold_in(SEED, D_VAL_SEED_TAG)))


class MAMLTest(tf.test.TestCase):

    def test_unrolled_adaptation_equals_the_loop(self):
        model = helpers.tiny_efficientlab(bn_mode="batch", dropout=0.0)
        adapter = segmentation.build_adapter(model, Omega(batch_size=2))
        task = helpers.random_task(shots=4, seed=2)
        start = adapter.initial_state()
        looped, _ = adapter.adapt(task.support_images, task.support_masks, LR,
                                  3, SEED, start=start)
        unrolled = adapter.adapt_unrolled(task.support_images,
                                          task.support_masks, LR, 3, SEED, start)
        for a, b in zip(looped.trainable, unrolled.trainable):
            self.assertAllClose(a, b, atol=1e-6)

    def test_meta_gradient_matches_finite_differences(self):
        _, adapter, task = setup()
        start = adapter.initial_state()
        direction, _, _, _ = maml.meta_gradient(
            adapter, task.support_images, task.support_masks, LR, STEPS, TAIL,
            SEED, start)
        grad = [-d / LR for d in direction]
        # First order (FOMAML's gradient): grad L_val at theta_tr, the
        # Jacobian of the inner loop dropped.
        fo_dir, _, _, _ = fomaml.meta_gradient(
            adapter, task.support_images, task.support_masks, LR, STEPS, TAIL,
            SEED, start)
        first_order = [-d / LR for d in fo_dir]
        rng = np.random.RandomState(0)
        eps = 1e-2
        theta = [tf.constant(t) for t in start.trainable]
        for trial in range(3):
            v = [rng.normal(size=t.shape).astype(np.float32) for t in theta]
            norm = np.sqrt(sum(float(np.sum(x * x)) for x in v))
            v = [x / norm for x in v]
            plus = meta_loss(adapter, task, [t + eps * x for t, x in zip(theta, v)], start)
            minus = meta_loss(adapter, task, [t - eps * x for t, x in zip(theta, v)], start)
            fd = (plus - minus) / (2 * eps)
            exact = sum(float(tf.reduce_sum(g * x)) for g, x in zip(grad, v))
            approx = sum(float(tf.reduce_sum(g * x)) for g, x in zip(first_order, v))
            self.assertAllClose(exact, fd, rtol=0.01, atol=1e-5,
                                msg=f"direction {trial}")
            # The first-order gradient misses the inner loop's Hessian by
            # far more than the tolerance.
            self.assertGreater(abs(approx - fd), 10 * abs(exact - fd) + 1e-4,
                               f"direction {trial}: fd {fd}, exact {exact}, "
                               f"first order {approx}")

    def test_maml_meta_step_trains(self):
        model = helpers.tiny_efficientlab(bn_mode="batch")
        config = MetaConfig(algo="maml", train_shots=4, foml_tail=2,
                            inner_iters=3, inner_batch=2, inner_lr=0.05,
                            meta_batch=2)
        learner = MetaLearner(model, config,
                              segmentation.task_fns(config.weight_decay),
                              bn_mode="batch")
        before = [v.numpy().copy() for v in model.trainable_variables]
        out = learner.meta_step(helpers.random_task(shots=4, meta_batch=2),
                                tf.constant(1.0), SEED)
        self.assertTrue(bool(out["finite"]))
        moved = [not np.array_equal(b, v.numpy())
                 for b, v in zip(before, model.trainable_variables)]
        self.assertTrue(all(moved))


if __name__ == "__main__":
    tf.test.main()
