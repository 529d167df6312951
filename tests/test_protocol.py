"""Evaluation tasks adapted side by side give the one-at-a-time numbers."""

import threading
import time

import numpy as np
import tensorflow as tf

from efficientlab_tf import segmentation
from efficientlab_tf.config import MetaConfig
from efficientlab_tf.evaluation import protocol
from efficientlab_tf.meta.learner import MetaLearner
from tests import helpers


class OrderedMapTest(tf.test.TestCase):

    def test_results_in_order_with_bounded_read_ahead(self):
        read = []
        peak = [0]
        active = [0]
        lock = threading.Lock()

        def items():
            for i in range(12):
                read.append(i)
                yield i

        def fn(i, item):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02 * (12 - i) % 0.07)  # Finish out of order.
            with lock:
                active[0] -= 1
            return i, item * item

        out = []
        for value in protocol.ordered_map(fn, items(), parallel=3):
            # When result k is handed out, at most 2 x 3 items were read.
            out.append(value)
            self.assertLessEqual(len(read), len(out) + 6)
        self.assertEqual(out, [(i, i * i) for i in range(12)])
        self.assertGreater(peak[0], 1)  # Really side by side.
        self.assertLessEqual(peak[0], 3)


class ParallelEvaluationTest(tf.test.TestCase):

    def test_parallel_tasks_score_as_sequential_ones(self):
        model = helpers.tiny_efficientlab(bn_mode="running")
        config = MetaConfig(inner_batch=2, inner_lr=0.1)
        learner = MetaLearner(model, config,
                              segmentation.task_fns(config.weight_decay))
        tasks = [helpers.random_task(shots=3, query=2, seed=s) for s in range(6)]
        before = helpers.variable_values(model)
        one = protocol.evaluate(learner.eval_task, tasks, 0.1, 4, seed=7)
        three = protocol.evaluate(learner.eval_task, tasks, 0.1, 4, seed=7,
                                  parallel=3)
        np.testing.assert_array_equal(one["per_task"], three["per_task"])
        # Adaptation moved the scores (tasks differ) and left the model be.
        self.assertGreater(np.ptp(one["per_task"]), 0.0)
        for b, a in zip(before, helpers.variable_values(model)):
            np.testing.assert_array_equal(a, b)


def test_a_task_that_meets_the_temporary_variable_race_is_run_again():
    """Issue 27 rehearsal: two concurrent evaluation tasks can collide on a
    TemporaryVariable name (AlreadyExistsError). The task is rerun and the
    results equal the sequential ones; a task that keeps failing raises."""
    import threading

    from efficientlab_tf.evaluation import protocol

    failed = set()
    lock = threading.Lock()

    def flaky(i, item):
        with lock:
            first = i not in failed
            failed.add(i)
        if first and i % 2 == 0:
            raise tf.errors.AlreadyExistsError(None, None, "tmp_var exists")
        return item * 10

    items = list(range(7))
    assert list(protocol.ordered_map(flaky, items, 2)) == [x * 10 for x in items]

    def always(i, item):
        raise tf.errors.AlreadyExistsError(None, None, "tmp_var exists")

    try:
        list(protocol.ordered_map(always, items, 2))
    except tf.errors.AlreadyExistsError:
        pass
    else:
        raise AssertionError("a task failing every try must raise")
