"""--mode=segment (`efficientlab segment`): your own photos, no model server.

Loads an exported SavedModel (or the newest one of an export folder or of a
training run) and, for every query photo, calls its `few_shot` signature in
this process, exactly as a TF Serving client sends a request
(`export/client.py`, protocol "local"): the support pairs, resized to the
first support image's size, and the photo at its own size; the signature
adapts with the exported omega (`few_shot_omega` with `--omega_file`'s lr
and steps) and answers at the photo's resolution. One photo per request, so
a photo's mask never depends on the others in the folder. Writes per photo
`<name>_mask.png` (0/255, the photo's size) and `<name>_overlay.png`, then
`contact_sheet.png` of all overlays; unreadable photos are listed (and in
`bad_files.txt`), not fatal.
"""

import glob
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from efficientlab_tf import storage
from efficientlab_tf.export import client
from efficientlab_tf.training import format_eta

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
OVERLAY_ALPHA = 0.45
THUMBNAIL = 256  # Contact-sheet cell side, px.


def saved_model_path(path):
    """The SavedModel `path` names: itself, the newest numbered version of
    an export folder, or of a training run's `saved_model/`."""
    if not path:
        raise ValueError("--mode=segment needs --segment_model=<SavedModel, "
                         "export folder or run folder>.")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for base in (path, os.path.join(path, "saved_model")):
        versions = [d for d in os.listdir(base) if d.isdigit()
                    and os.path.isfile(os.path.join(base, d, "saved_model.pb"))
                    ] if os.path.isdir(base) else []
        if versions:
            return os.path.join(base, max(versions, key=int))
    raise FileNotFoundError(
        f"--segment_model={path!r} holds no SavedModel (saved_model.pb), no "
        "numbered versions of one, and no saved_model/ of a training run.")


def query_paths(specs):
    """Photos named by files, folders (their images, sorted; a PNG beside a
    JPEG of the same name is that photo's mask, FSS-1000's layout, and left
    out) and globs."""
    paths = []
    for spec in specs:
        if os.path.isdir(spec):
            found = [os.path.join(spec, n) for n in sorted(os.listdir(spec))
                     if n.lower().endswith(IMAGE_EXTENSIONS)
                     and not _is_mask(os.path.join(spec, n))]
        elif any(c in spec for c in "*?["):
            found = sorted(glob.glob(spec))
        else:
            found = [spec]
        if not found:
            raise FileNotFoundError(f"--segment_images: {spec!r} names no photos.")
        paths.extend(found)
    return list(dict.fromkeys(paths))


def _is_mask(path):
    stem, ext = os.path.splitext(path)
    return ext.lower() == ".png" and os.path.exists(stem + ".jpg")


def overlay(photo, mask):
    """The photo with the mask tinted red and its boundary drawn."""
    out = photo.astype(np.float32)
    on = mask > 0
    out[on] = (1 - OVERLAY_ALPHA) * out[on] + OVERLAY_ALPHA * np.array([255, 0, 0])
    edge = on & ~(np.roll(on, 1, 0) & np.roll(on, -1, 0)
                  & np.roll(on, 1, 1) & np.roll(on, -1, 1))
    out[edge] = [255, 255, 0]
    return out.astype(np.uint8)


def contact_sheet(overlays, columns=6):
    """One image of thumbnails of `overlays` (uint8 arrays), row by row."""
    columns = max(1, min(columns, len(overlays)))
    rows = (len(overlays) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * THUMBNAIL, rows * THUMBNAIL), "white")
    for i, image in enumerate(overlays):
        thumb = Image.fromarray(image)
        thumb.thumbnail((THUMBNAIL, THUMBNAIL))
        sheet.paste(thumb, ((i % columns) * THUMBNAIL, (i // columns) * THUMBNAIL))
    return sheet


def _save_png(image, path):
    with storage.atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def run(config, record_fn, model=None):
    del model  # The exported network is what segments.
    seg = config.segment
    path = saved_model_path(seg.model)
    if not seg.support:
        raise ValueError("--mode=segment needs --segment_support=<folder of "
                         "<n>.jpg + <n>.png pairs>.")
    if not seg.images:
        raise ValueError("--mode=segment needs --segment_images=<photos, "
                         "folders or globs>.")
    photos = query_paths(seg.images)
    support = client.read_support(seg.support)
    lr = steps = None
    if config.eval.omega_file:  # few_shot_omega: the file's lr and steps.
        lr, steps = config.eval_omega.lr, config.eval_omega.steps
    record_fn(config)
    loaded = tf.saved_model.load(path)
    names = client.mask_names(photos)
    written, overlays, bad = [], [], []
    start = time.time()
    for i, photo_path in enumerate(photos):
        try:
            photo = client.load_image(photo_path)
        except (OSError, ValueError) as e:
            bad.append(f"{photo_path}: {e}")
            continue
        mask = client.segment(loaded, None, [photo_path], protocol="local",
                              signature="few_shot", support=support, lr=lr,
                              steps=steps)[photo_path]
        mask_file = os.path.join(seg.out_dir, names[photo_path])
        client.write_mask_png(mask, mask_file)
        picture = overlay(photo, mask)
        _save_png(picture, mask_file.replace("_mask.png", "_overlay.png"))
        overlays.append(picture)
        written.append(mask_file)
        done = i + 1
        rate = (time.time() - start) / done
        sys.stderr.write(f"\rsegment: {done}/{len(photos)} photos, {rate:.2f} s "
                         f"each, ETA {format_eta(rate * (len(photos) - done))}  ")
        sys.stderr.flush()
    sys.stderr.write("\n")
    if overlays:
        sheet = contact_sheet(overlays)
        with storage.atomic_path(os.path.join(seg.out_dir, "contact_sheet.png")) as tmp:
            sheet.save(tmp, format="PNG")
    if bad:
        storage.write_text(os.path.join(seg.out_dir, "bad_files.txt"),
                           "\n".join(bad) + "\n")
        sys.stderr.write(f"segment: {len(bad)} photos could not be read "
                         f"(listed in {seg.out_dir}/bad_files.txt):\n  "
                         + "\n  ".join(bad) + "\n")
    result = {"saved_model": path, "masks": written, "bad_files": bad,
              "out_dir": os.path.abspath(seg.out_dir)}
    print(json.dumps({"saved_model": path, "masks": len(written),
                      "bad_files": len(bad), "out_dir": result["out_dir"]}))
    return result
