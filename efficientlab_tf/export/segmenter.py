"""An exported EfficientLab called in this process: arrays in, masks out.

`Segmenter(path)` loads a SavedModel written by `export/saved_model.py` and
calls its `few_shot` (or `few_shot_omega`) signature with numpy arrays, as
the model server would run it, without a JSON body or a second decode:

* the support pairs and every photo are resized to the network size S
  first (`photos.to_network`: antialiased, so a phone photo costs its
  decode and one resize, not a request of 36 MB of pixels);
* the support set is adapted to once per request, and photos go in chunks
  of up to `chunk` per request: the signature predicts every query on its
  own (a batch-statistics network normalises each query alone), so a
  photo's mask is the same in any chunk as alone (tests/test_segmenter.py);
* each answer (S x S probabilities) is resized back to the photo's size,
  bilinear, and thresholded at 0.5, as the served signatures do.

The request limits of the export (`assets.extra/efficientlab_export.json`)
are checked before the first call: too many support pairs, or an omega
beyond the export's limits, is one ValueError naming the argument.
"""

import os

import numpy as np
import tensorflow as tf

from efficientlab_tf.export import photos
from efficientlab_tf.export.saved_model import read_record

# Photos per few_shot request: the support set is adapted to once per
# request, so larger chunks amortise it; 16 photos of 96 px are ~4 MB.
CHUNK = 16


def saved_model_path(path):
    """The SavedModel `path` names: itself, the newest numbered version of
    an export folder, or of a training run's `saved_model/`."""
    if not path:
        raise ValueError("no model given: pass an exported SavedModel, an "
                         "export folder or a training run folder.")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for base in (path, os.path.join(path, "saved_model")):
        versions = [d for d in os.listdir(base) if d.isdigit()
                    and os.path.isfile(os.path.join(base, d, "saved_model.pb"))
                    ] if os.path.isdir(base) else []
        if versions:
            return os.path.join(base, max(versions, key=int))
    raise FileNotFoundError(
        f"{path!r} holds no SavedModel (saved_model.pb), no numbered versions "
        "of one, and no saved_model/ of a training run.")


class Segmenter:
    """An exported EfficientLab in this process (module doc).

    Args:
        path: A SavedModel, an export folder (its newest version) or a
            training run folder (its `saved_model/`).

    Raises:
        FileNotFoundError: nothing loadable at `path`.
        ValueError: the SavedModel is unreadable or not an EfficientLab
            export with the few-shot signatures.
    """

    def __init__(self, path):
        self.path = saved_model_path(path)
        try:
            self._model = tf.saved_model.load(self.path)
        except Exception as e:  # noqa: BLE001 (parse errors come as many types)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{self.path}: not a loadable SavedModel "
                             f"({type(e).__name__}: {first[:200]})") from None
        missing = {"few_shot", "few_shot_omega"} - set(self._model.signatures)
        record = read_record(self.path)
        if missing or record is None:
            raise ValueError(
                f"{self.path}: not an EfficientLab export of this package "
                f"({'no ' + ', '.join(sorted(missing)) + ' signature' if missing else 'no assets.extra/efficientlab_export.json'}); "
                "export one with `efficientlab export` (or run_meta.py "
                "--mode=export).")
        self.image_size = int(record["image_size"])
        self.omega = record["omega"]
        self.limits = record["limits"]

    # ------------------------------------------------------------ checks
    def _check_omega(self, lr, steps):
        """(lr, steps) for few_shot_omega, or (None, None) for the export's."""
        if lr is None and steps is None:
            return None, None
        if lr is None or steps is None:
            raise ValueError("lr and steps go together (few_shot_omega); got "
                             f"lr={lr!r}, steps={steps!r}.")
        lr, steps = float(lr), int(steps)
        top_lr, top_steps = self.limits["max_request_lr"], self.limits["max_request_steps"]
        if not (0 < lr <= top_lr) or not 0 <= steps <= top_steps:
            raise ValueError(
                f"omega lr {lr:g} and {steps} steps are outside this export's "
                f"limits (0 < lr <= {top_lr:g}, 0 <= steps <= {top_steps}; set "
                f"at export by --max_request_lr/--max_request_steps): {self.path}")
        return lr, steps

    def _check_count(self, count, what):
        top = self.limits["max_request_images"]
        if count > top:
            raise ValueError(f"{count} {what}, more than the {top} one request "
                             f"of this export takes (--max_request_images at "
                             f"export): {self.path}")

    def support(self, images, masks):
        """The support set as one request's tensors at S x S.

        Args:
            images: uint8 [H, W, 3] arrays (any sizes).
            masks: their masks, [H, W] (or [H, W, 1]) of the same size, bool
                or uint8 with values 0/1 or 0/255 (the package's mask rule).

        Returns:
            (uint8 [K, S, S, 3], uint8 {0, 1} [K, S, S]).
        """
        if len(images) != len(masks) or not len(images):
            raise ValueError(f"support_images and support_masks must be as many "
                             f"and not none; got {len(images)} and {len(masks)}.")
        self._check_count(len(images), "support pairs")
        size = self.image_size
        out_images, out_masks = [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            image = photos.check_image(image, f"support_images[{i}]")
            mask = photos.check_mask(mask, f"support_masks[{i}]", image.shape)
            out_images.append(photos.to_network(image, size))
            out_masks.append(photos.mask_to_network(mask, size))
        return np.stack(out_images), np.stack(out_masks)

    # ------------------------------------------------------------ calls
    def probabilities(self, support, images, lr=None, steps=None, chunk=CHUNK):
        """Target probabilities float32 [S, S] of each image (uint8 [S, S, 3],
        already resized by `photos.to_network`), `chunk` per request."""
        lr, steps = self._check_omega(lr, steps)
        chunk = max(1, min(chunk, self.limits["max_request_images"]))
        support_images, support_masks = support
        out = []
        for start in range(0, len(images), chunk):
            queries = tf.constant(np.stack(images[start:start + chunk]), tf.uint8)
            inputs = {"support_images": tf.constant(support_images, tf.uint8),
                      "support_masks": tf.constant(support_masks, tf.uint8),
                      "query_images": queries}
            if lr is None:
                answer = self._model.signatures["few_shot"](**inputs)
            else:
                answer = self._model.signatures["few_shot_omega"](
                    **inputs, lr=tf.constant([lr], tf.float32),
                    steps=tf.constant([steps], tf.int32))
            out.extend(answer["probabilities"].numpy())
        return out

    def segment(self, support_images, support_masks, query_images, lr=None,
                steps=None, chunk=CHUNK):
        """Masks (uint8 {0, 1} [H, W], at each query's size) of
        `query_images` after adapting once to the support set, with the
        exported omega (or `lr` and `steps`, within the export's limits).

        Args:
            support_images, support_masks: as `support`.
            query_images: uint8 [H, W, 3] arrays, any sizes.
        """
        support = self.support(support_images, support_masks)
        self._check_omega(lr, steps)
        queries = [photos.check_image(q, f"query_images[{i}]")
                   for i, q in enumerate(query_images)]
        probs = self.probabilities(
            support, [photos.to_network(q, self.image_size) for q in queries],
            lr, steps, chunk)
        return [(photos.to_photo_size(p, *q.shape[:2]) >= 0.5).astype(np.uint8)
                for p, q in zip(probs, queries)]
