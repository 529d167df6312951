"""Comparison table: paired differences and files, by hand."""

import json
import os
import tempfile

import tensorflow as tf

from efficientlab_tf.evaluation import compare


class CompareTest(tf.test.TestCase):

    def test_paired_rows_and_files(self):
        rows = [{"name": "ref", "steps": 50, "mean_iou": 0.4, "ci95": 0.1,
                 "per_task": [0.3, 0.5]},
                {"name": "meta", "steps": 5, "mean_iou": 0.6, "ci95": 0.1,
                 "per_task": [0.5, 0.7]}]
        compare.add_paired(rows, "ref")
        # meta - ref = (0.2, 0.2): mean 0.2, no spread.
        self.assertAllClose(rows[1]["diff_vs_ref"], 0.2)
        self.assertAllClose(rows[1]["diff_ci95"], 0.0)
        out = tempfile.mkdtemp()
        path = compare.write_table(rows, "ref", out)
        text = open(path).read()
        self.assertIn("| meta | 5 | 0.6000 | ±0.1000 | +0.2000 ± 0.0000 |", text)
        with open(os.path.join(out, "compare.json")) as f:
            self.assertEqual(len(json.load(f)), 2)
        with self.assertRaisesRegex(ValueError, "reference row 'nope'"):
            compare.add_paired(rows, "nope")
