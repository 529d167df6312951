"""Prediction grids (Figure 4) and the lr-sweep plot (Figure 2)."""

import os
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from efficientlab_tf.data.tasks import TaskBatch
from efficientlab_tf.evaluation import plots


class PlotsTest(tf.test.TestCase):

    def test_grid_colours_by_hand(self):
        # 1 support, 2 queries, 1x1 images of grey 100: support pixel is
        # target (green), query 0 predicted but not target (red), query 1
        # both (yellow).
        grey = tf.fill([1, 1, 1, 3], 100.0)
        task = TaskBatch(grey, tf.ones([1, 1, 1, 1]),
                         tf.concat([grey, grey], 0),
                         tf.constant([0.0, 1.0], shape=[2, 1, 1, 1]))
        grid = plots.prediction_grid(task, tf.constant([0.9, 0.7], shape=[2, 1, 1]))
        base = 0.6 * 100 / 255
        self.assertEqual(grid.shape, (2, 2, 3))
        self.assertAllClose(grid[0, 0], [base, base + 0.4, base])   # support: GT
        self.assertAllClose(grid[0, 1], [0, 0, 0])                  # padding
        self.assertAllClose(grid[1, 0], [base + 0.4, base, base])   # FP: red
        self.assertAllClose(grid[1, 1], [base + 0.4, base + 0.4, base])
        path = os.path.join(tempfile.mkdtemp(), "grid.png")
        plots.write_png(grid, path)
        self.assertEqual(np.asarray(Image.open(path)).shape, (2, 2, 3))

    def test_lr_sweep_plot_writes_a_png(self):
        rows = [{"lr": lr, "mean_iou": iou, "best_steps": s}
                for lr, iou, s in [(0.005, 0.3, 12), (0.05, 0.5, 6), (0.5, 0.2, 2)]]
        path = os.path.join(tempfile.mkdtemp(), "sweep.png")
        plots.lr_sweep_plot(rows, 0.05, path)
        self.assertGreater(os.path.getsize(path), 1000)
