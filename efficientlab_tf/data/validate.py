"""Content checks of image/mask pairs, done once per file and cached.

Every check decodes with the pipeline's own decoder (`decode.decode_pixels`,
the one behind training, evaluation and the shards), so what the scan
reports is what training sees: a TIFF named `.jpg` that PIL would open is
refused here, and a 16-bit PNG mask, which TensorFlow's PNG decoder rescales
to 8 bits (v x 255 / 65535, so 0/255 and 0/1 masks become empty), is counted
as the empty mask training would get and named as 16-bit.

A pair is bad when the image or the mask does not decode (truncated JPEG,
zero-byte PNG, a format the pipeline does not read), when the mask's size
differs from the image's (it would be stretched), or when the mask is not a binary mask: every value must be in
{0, 255} or in {0, 1} (an RGB photo saved as `<n>.png` fails here). A class
whose masks are all background after decoding (the rule of
`decode.binarize_mask`) is reported too: its tasks would have no target.

Checking decodes every file, so results are cached per file by (size,
modification time) in `<cache>/scan/<root hash>.json` (`storage.cache_dir()`,
i.e. $EFFICIENTLAB_CACHE_DIR or ~/.cache/efficientlab_tf): the second scan
of a large tree reads only directory entries and `stat`s.
"""

import hashlib
import json
import os
import re

import numpy as np
import tensorflow as tf

from efficientlab_tf import storage
from efficientlab_tf.data import decode

# 2: decoded by the pipeline's decoder (1 used PIL, which disagreed with it
# on 16-bit PNGs and TIFFs).
CACHE_VERSION = 2


def mask_values_problem(values):
    values = set(values.tolist())
    if values <= {0, 255} or values <= {0, 1}:
        return None
    shown = sorted(values)[:8]
    more = "..." if len(values) > 8 else ""
    return (f"mask is not binary (values {shown}{more}; expected 0/255 or 0/1 "
            "masks)")


def _read_pixels(path, channels, what):
    """(uint8 [H, W, channels] as the pipeline decodes `path`, None) or
    (None, problem)."""
    try:
        with open(path, "rb") as f:
            contents = f.read()
        return decode.decode_pixels(contents, channels).numpy(), None
    except (OSError, tf.errors.OpError) as e:
        reason = str(getattr(e, "message", None) or getattr(e, "strerror", None)
                     or e).splitlines()[0]
        # TF's messages carry "{{function_node ...}} " and " [Op:...]".
        reason = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "",
                        reason)
        return None, (f"{path}: cannot decode {what} with the pipeline's "
                      f"decoder ({reason})")


def check_pair(image_path, mask_path):
    """(problems, target pixels) of one pair; problems is [] when it is fine.

    Both files are decoded as the pipeline decodes them; target pixels follow
    `decode.binarize_mask` (0/1 or 0/255 masks).
    """
    image, problem = _read_pixels(image_path, 3, "image")
    if problem:
        return [problem], 0
    mask, problem = _read_pixels(mask_path, 1, "mask")
    if problem:
        return [problem], 0
    mask = mask[..., 0]
    problems = []
    if image.shape[:2] != mask.shape:
        problems.append(f"{mask_path}: mask size {mask.shape[::-1]} differs "
                        f"from image size {image.shape[1::-1]} (width, height)")
    problem = mask_values_problem(np.unique(mask))
    if problem:
        problems.append(f"{mask_path}: {problem}")
    threshold = 1 if mask.max(initial=0) <= 1 else 128  # decode.binarize_mask
    target = int((mask >= threshold).sum())
    if not target and decode.png_bit_depth(mask_path) == 16:
        problems.append(
            f"{mask_path}: 16-bit PNG mask; TensorFlow decodes it to 8 bits "
            "(v x 255 / 65535), which leaves no target pixel. Save masks as "
            "8-bit PNGs (values 0/255 or 0/1).")
    return problems, target


def _cache_path(root):
    digest = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    return os.path.join(storage.cache_dir(), "scan", f"{digest}.json")


def _stamp(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _load_cache(path):
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("version") == CACHE_VERSION:
            return data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def _save_cache(path, files):
    try:
        storage.write_text(path, json.dumps({"version": CACHE_VERSION, "files": files}))
    except OSError:
        pass  # A cache that cannot be written only costs time.


def check_classes(classes, root):
    """Checks every pair of `{class: [(image, mask), ...]}` under `root`.

    Returns:
        (good {class: pairs}, problems): bad pairs are left out of `good`;
        a class whose remaining masks are all background is listed in
        problems and left out.
    """
    cache_file = _cache_path(root)
    cache = _load_cache(cache_file)
    fresh = {}
    good, problems = {}, []
    for name, pairs in classes.items():
        kept, target = [], 0
        for pair in pairs:
            image, mask = pair[0], pair[1]
            key = f"{image}|{mask}"
            try:
                stamp = _stamp(image) + _stamp(mask)
            except OSError as e:
                problems.append(f"{e.filename}: cannot read ({e.strerror})")
                continue
            entry = cache.get(key)
            if not entry or entry[0] != stamp:
                entry = [stamp, *check_pair(image, mask)]
            fresh[key] = entry
            if entry[1]:
                problems.extend(entry[1])
                continue
            kept.append(pair)
            target += entry[2]
        if kept and not target:
            problems.append(
                f"{os.path.join(root, name)}: every mask of class {name!r} is "
                "all background after decoding (0/255 masks: target >= 128; "
                "0/1 masks: target = 1)")
            continue
        if kept:
            good[name] = kept
    if fresh != cache:
        _save_cache(cache_file, fresh)
    return good, problems
