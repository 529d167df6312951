"""--mode=segment (`efficientlab segment`): your own photos, no model server.

Loads an exported SavedModel (`--segment_model`: an export, an export folder
or a training run; none: the model shipped with the package) into a
`export.segmenter.Segmenter`, reads the support pairs of `--segment_support`
and adapts to them once per chunk of photos (`Segmenter.probabilities`:
every photo predicted on its own, so its mask never depends on the others).
Each file is read once (`export/photos.py`: regular files only, size and
pixel limits, EXIF orientation applied).

Writes into `--segment_out_dir` (never an input folder, nor inside one):
per photo `<name>_mask.png` (0/255, the photo's upright size) and
`<name>_overlay.png` (at most `PREVIEW` px on its longer side), then
`segments.csv` (per photo: size, foreground fraction, confidence = the mean
of max(p, 1 - p) over the network's S x S answer), `contact_sheet.png`,
with `--segment_coco` `annotations.json` (COCO run-length-encoded masks,
pycocotools), and `bad_files.txt` listing every file that could not be
used; a bad photo never stops the run. The run's record (flags, config,
lock) lives in the hidden `.efficientlab/` subfolder.
"""

import csv
import glob
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image

from efficientlab_tf import storage
from efficientlab_tf.export import photos
from efficientlab_tf.export.segmenter import Segmenter
from efficientlab_tf.training import format_eta

OVERLAY_ALPHA = 0.45
THUMBNAIL = 256  # Contact-sheet cell side, px.
PREVIEW = 1024  # Longest side of an overlay, px.
RECORD_DIR = ".efficientlab"  # The run's record, inside the output folder.


def query_paths(specs):
    """Photos named by files (a name that exists is a file, even with
    `[` or `*` in it), folders (their images, sorted; a PNG beside another
    image of the same stem, in any letter case, is that photo's mask and is
    left out) and globs."""
    paths = []
    for spec in specs:
        if os.path.isdir(spec):
            names = sorted(os.listdir(spec))
            stems = {os.path.splitext(n)[0].lower() for n in names
                     if n.lower().endswith(photos.PHOTO_EXTENSIONS)
                     and not n.lower().endswith(".png")}
            found = [os.path.join(spec, n) for n in names
                     if n.lower().endswith(photos.PHOTO_EXTENSIONS)
                     and not (n.lower().endswith(".png")
                              and os.path.splitext(n)[0].lower() in stems)]
        elif os.path.lexists(spec):
            found = [spec]
        elif any(c in spec for c in "*?["):
            found = sorted(glob.glob(spec))
        else:
            found = []
        if not found:
            raise FileNotFoundError(f"--segment_images: {spec!r} names no photos.")
        paths.extend(found)
    return list(dict.fromkeys(paths))


def check_out_dir(out_dir, inputs, photo_folders=()):
    """Refuses an output folder that is, or is inside, an input folder
    (`inputs`: the support folder, folders and glob roots of the photos: a
    rerun would segment its own outputs), or that is the folder of a photo
    named on its own (its `x_mask.png` could be the user's)."""
    out = os.path.realpath(out_dir)
    for folder in inputs:
        real = os.path.realpath(folder)
        if out == real or out.startswith(real.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"--segment_out_dir={out_dir!r} is inside the input folder "
                f"{folder!r}; choose a folder outside the photos and the "
                "support examples.")
    for folder in photo_folders:
        if out == os.path.realpath(folder):
            raise ValueError(
                f"--segment_out_dir={out_dir!r} is the folder of the photos; "
                "choose another (the masks would land among them).")


def overlay(photo, mask):
    """The photo with the mask tinted red and its boundary drawn."""
    out = photo.astype(np.float32)
    on = mask > 0
    out[on] = (1 - OVERLAY_ALPHA) * out[on] + OVERLAY_ALPHA * np.array([255, 0, 0])
    edge = on & ~(np.roll(on, 1, 0) & np.roll(on, -1, 0)
                  & np.roll(on, 1, 1) & np.roll(on, -1, 1))
    out[edge] = [255, 255, 0]
    return out.astype(np.uint8)


def preview(pixels, longest=PREVIEW):
    """uint8 [h, w, 3] with the longer side at most `longest` (box filter)."""
    image = Image.fromarray(pixels)
    image.thumbnail((longest, longest), Image.BOX)
    return np.asarray(image)


def thumbnail(image):
    """uint8 [h, w, 3] within THUMBNAIL x THUMBNAIL (a contact-sheet cell)."""
    thumb = Image.fromarray(image)
    thumb.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(thumb)


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


def run_length(mask):
    """COCO's run-length encoding of a {0, 1} mask (pycocotools), with its
    area and box: what annotations.json keeps of a photo's mask (a 12 MP
    mask is 12 MB; its RLE a few KB)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    area, box = float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"segmentation": rle, "area": area, "bbox": box}


def coco_annotations(rows, category):
    """A COCO results dict: one image and one RLE annotation per photo."""
    images, annotations = [], []
    for i, row in enumerate(rows, 1):
        images.append({"id": i, "file_name": photos.show(row["photo"]),
                       "height": row["height"], "width": row["width"]})
        annotations.append({"id": i, "image_id": i, "category_id": 1,
                            **row["rle"], "iscrowd": 0,
                            "score": row["confidence"]})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": category}]}


class _Progress:
    """One stderr line: files handled (bad ones included), rate, ETA."""

    def __init__(self, total):
        self.total, self.done, self.bad = total, 0, 0
        self.start = time.time()

    def step(self, bad=False):
        self.done += 1
        self.bad += int(bad)
        rate = (time.time() - self.start) / self.done
        skipped = f", {self.bad} unreadable" if self.bad else ""
        sys.stderr.write(f"\rsegment: {self.done}/{self.total} photos{skipped}, "
                         f"{rate:.2f} s each, ETA "
                         f"{format_eta(rate * (self.total - self.done))}  ")
        sys.stderr.flush()


def run(config, record_fn, model=None):
    del model  # The exported network is what segments.
    from efficientlab_tf import shipped

    seg = config.segment
    if not seg.support:
        raise ValueError("--mode=segment needs --segment_support=<folder of "
                         "<n>.jpg + <n>.png pairs>.")
    if not seg.images:
        raise ValueError("--mode=segment needs --segment_images=<photos, "
                         "folders or globs>.")
    photo_paths = query_paths(seg.images)
    folders = [seg.support] + [s for s in seg.images if os.path.isdir(s)]
    folders += [os.path.dirname(s) or "." for s in seg.images
                if not os.path.lexists(s) and any(c in s for c in "*?[")]
    check_out_dir(seg.out_dir, folders,
                  {os.path.dirname(os.path.abspath(p)) for p in photo_paths})
    segmenter = Segmenter(seg.model or shipped.model_path())
    images, masks, bad = photos.read_support(seg.support,
                                            config.data.skip_bad_examples)
    support = segmenter.support(images, masks)
    del images, masks
    lr = steps = None
    if config.eval.omega_file:  # few_shot_omega: the file's lr and steps.
        lr, steps = segmenter._check_omega(config.eval_omega.lr,  # noqa: SLF001
                                           config.eval_omega.steps)
    record_fn(config)
    names = photos.mask_names(photo_paths)
    rows, overlays = [], []
    progress = _Progress(len(photo_paths))
    size = segmenter.image_size
    for start in range(0, len(photo_paths), seg.chunk):
        chunk = []
        for path in photo_paths[start:start + seg.chunk]:
            try:
                pixels = photos.read_photo(path)
            except photos.BadFile as e:
                bad.append(str(e))
                progress.step(bad=True)
                continue
            chunk.append((path, pixels.shape[:2], photos.to_network(pixels, size),
                          preview(pixels)))
            del pixels  # Only S x S and the preview stay in memory.
        if not chunk:
            continue
        probs = segmenter.probabilities(support, [c[2] for c in chunk], lr,
                                        steps, chunk=len(chunk))
        for (path, (height, width), _, small), p in zip(chunk, probs):
            mask = (photos.to_photo_size(p, height, width) >= 0.5).astype(np.uint8)
            mask_file = os.path.join(seg.out_dir, names[path])
            photos.write_mask_png(mask, mask_file)
            small_mask = np.asarray(Image.fromarray(mask).resize(
                small.shape[1::-1], Image.NEAREST))
            picture = overlay(small, small_mask)
            _save_png(picture, mask_file[:-len("_mask.png")] + "_overlay.png")
            # Kept for the summary files: a thumbnail and a few numbers, never
            # the full-size mask (100 phone photos kept 1.2 GB of masks).
            overlays.append(thumbnail(picture))
            rows.append({"photo": path, "mask_file": mask_file,
                         "height": height, "width": width,
                         "confidence": float(np.mean(np.maximum(p, 1 - p))),
                         "foreground": float(mask.mean()),
                         "rle": run_length(mask) if seg.coco else None})
            progress.step()
    sys.stderr.write("\n")
    _write_outputs(seg, rows, overlays, bad)
    result = {"saved_model": segmenter.path,
              "masks": [r["mask_file"] for r in rows], "bad_files": bad,
              "out_dir": os.path.abspath(seg.out_dir)}
    print(json.dumps({"saved_model": segmenter.path, "masks": len(rows),
                      "bad_files": len(bad), "out_dir": result["out_dir"]}))
    return result


def _write_outputs(seg, rows, overlays, bad):
    if overlays:
        sheet = contact_sheet(overlays)
        with storage.atomic_path(os.path.join(seg.out_dir, "contact_sheet.png")) as tmp:
            sheet.save(tmp, format="PNG")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["photo", "mask", "height", "width", "foreground_fraction",
                     "confidence"])
    for r in rows:
        writer.writerow([photos.show(r["photo"]), os.path.basename(r["mask_file"]),
                         r["height"], r["width"],
                         f"{r['foreground']:.4f}", f"{r['confidence']:.4f}"])
    storage.write_text(os.path.join(seg.out_dir, "segments.csv"), text.getvalue())
    if seg.coco:
        category = os.path.basename(os.path.normpath(seg.support))
        storage.write_json(os.path.join(seg.out_dir, "annotations.json"),
                           coco_annotations(rows, category))
    if bad:
        # Escaped names (photos.show): any file name can be listed.
        bad = [photos.show(line) for line in bad]
        storage.write_text(os.path.join(seg.out_dir, "bad_files.txt"),
                           "\n".join(bad) + "\n")
        sys.stderr.write(f"segment: {len(bad)} files could not be used "
                         f"(listed in {seg.out_dir}/bad_files.txt):\n  "
                         + "\n  ".join(bad) + "\n")
