"""The model shipped in saved_models/ (issue 33): served by the shipped
deployment as it is, and better than a centred box on real photos.

The serving test loads `saved_models/` through the emulated model server
(tests/tf_serving_emulation.py) with the shipped docker-compose.yml and
models.config: the server's load replays the export's warmup through every
signature (a failing record fails the load), then a few_shot request is
answered. The real-photo test adapts the shipped model to 5 labelled photos
of each of a few ../shared classes, as a user of `el.load()` would, and
scores the other photos of the class with the package's one IoU, against
the centred box whose size fits these very photos best (a baseline tuned on
the test photos themselves: it can only flatter the box).
"""

import os

import numpy as np
import pytest

from efficientlab_tf import shipped
from efficientlab_tf.evaluation.compare import BOX_FRACTIONS
from efficientlab_tf.model.metrics import binary_iou
from tests import helpers
from tests import tf_serving_emulation as emulation

SHARED = os.path.join(helpers.ROOT, "..", "shared", "data")
CLASSES = ("realfss-train/horse", "realfss-train/aeroplane",
           "realfss-extra/kangaroo", "realfss-extra/abyssinian_cat")

pytestmark = pytest.mark.slow  # Loads the shipped Lite0 export.


def test_the_shipped_export_is_a_versioned_export_under_25_mb():
    folder = shipped.model_path()
    assert os.path.isfile(os.path.join(folder, "MODEL_CARD.md"))
    versions = [d for d in os.listdir(folder) if d.isdigit()]
    assert versions == ["1"]  # One version, replaced rather than accumulated.
    total = sum(os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(os.path.join(folder, "1")) for f in files)
    assert total < 25 * 2**20, total


def test_the_shipped_deployment_serves_the_shipped_model():
    deployment = emulation.Deployment(os.path.join(helpers.ROOT, "saved_models"))
    try:
        server = deployment.server
        assert not {k: v for k, v in server.load_errors.items()
                    if k[0] == shipped.NAME}, server.load_errors
        (servable,) = server.models[shipped.NAME].values()  # Warmed at load.
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
        mask = np.zeros((1, 96, 96), np.uint8)
        mask[:, 24:72, 24:72] = 255
        out = servable.predict("few_shot", {"support_images": image,
                                            "support_masks": mask,
                                            "query_images": image})
        assert out["masks"].shape == (1, 96, 96)
        status, body = emulation.rest_predict(
            server, f"/v1/models/{shipped.NAME}:predict",
            {"signature_name": "serving_default",
             "inputs": {"images": image.tolist()}})
        assert status == 200 and np.asarray(body["outputs"]["masks"]).shape == (1, 96, 96)
    finally:
        deployment.stop()


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is absent")
def test_five_labelled_photos_beat_the_centred_box_on_real_photos():
    import efficientlab_tf as el
    from efficientlab_tf.export import photos

    segmenter = el.load()  # No path: the shipped model.
    model_iou, box_scores = [], {f: [] for f in BOX_FRACTIONS}
    for name in CLASSES:
        images, masks, _ = photos.read_support(os.path.join(SHARED, name))
        predicted = segmenter.segment(images[:5], masks[:5], images[5:10])
        truth = np.stack(masks[5:10])
        model_iou += list(binary_iou(truth, np.stack(predicted).astype(np.float32)).numpy())
        size = truth.shape[1]
        for f in BOX_FRACTIONS:
            side, start = round(f * size), (size - round(f * size)) // 2
            box = np.zeros(truth.shape, np.float32)
            box[:, start:start + side, start:start + side] = 1
            box_scores[f] += list(binary_iou(truth, box).numpy())
    best_box = max(np.mean(v) for v in box_scores.values())
    print(f"shipped model {np.mean(model_iou):.3f}, best centred box {best_box:.3f}")
    assert np.mean(model_iou) > best_box + 0.05
