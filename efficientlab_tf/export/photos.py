"""Reading users' photos and masks for `segment`, the Python API and the client.

Each file is read once, with the package's one decoder (`data/decode.py`,
TensorFlow's, as training and the scan of `data/validate.py` decode), and
checked before its pixels are touched:

* only regular files (a FIFO named `.jpg` would block the read; a link to
  `/dev/zero` would read until memory runs out), at most `MAX_FILE_BYTES`;
* the pixel count read from the header (PIL reads only the header here) at
  most `MAX_PHOTO_PIXELS`, so a small PNG that declares 12000 x 12000 pixels
  is refused before decoding;
* the EXIF orientation applied (as every viewer shows the photo), to images
  and to masks alike; 16-bit PNGs come out as TensorFlow decodes them
  (v x 255 / 65535), never clipped.

Every refusal is a `BadFile` (a ValueError) whose message starts with the
path, so a caller can list it (`bad_files.txt`) and go on.

`to_network(pixels, size)` resizes a photo to the network's S x S input with
antialiasing (a 4032 px phone photo shrunk to 96 px without it keeps only
scattered pixels); `mask_to_network` does the same for a {0, 1} mask and
thresholds at 0.5.
"""

import io
import os
import stat

import numpy as np
import tensorflow as tf
from PIL import Image

from efficientlab_tf import storage
from efficientlab_tf.data import decode
from efficientlab_tf.data import fss1000

# Largest file read (bytes): a 48-megapixel phone JPEG is ~25 MB, a PNG of
# it up to ~150 MB uncompressed; 200 MiB leaves room and refuses runaways.
MAX_FILE_BYTES = 200 * 2**20
# Largest image (height x width): 48-megapixel phone photos (8000 x 6000)
# pass; decoding one costs 144 MB of uint8.
MAX_PHOTO_PIXELS = 64 * 10**6
# What the decoder reads (decode.decode_pixels): JPEG, PNG, BMP, GIF.
PHOTO_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# EXIF orientation tag -> numpy transform of an [H, W, C] array (EXIF 2.3:
# 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 CW, 7 transverse,
# 8 rotate 90 CCW).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 1)[::-1],
    8: lambda a: np.rot90(a, 1),
}
_EXIF_ORIENTATION = 0x0112


class BadFile(ValueError):
    """A file that cannot be used; the message starts with its path."""


def read_bytes(path, limit=MAX_FILE_BYTES):
    """The bytes of the regular file `path` (at most `limit`), else BadFile."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; the fstat
        # below then refuses it (stat-then-open would race a swapped file).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadFile(f"{show(path)}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadFile(f"{show(path)}: not a regular file (a FIFO, device, "
                          "folder or socket); only image files are read")
        if st.st_size > limit:
            raise BadFile(f"{show(path)}: {st.st_size} bytes, more than the "
                          f"limit of {limit}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BadFile(f"{show(path)}: grew past {limit} bytes while read")
        return data
    finally:
        os.close(fd)


def header(data, path, max_pixels=MAX_PHOTO_PIXELS):
    """(height, width, EXIF orientation) from the header, else BadFile."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
    except Image.UnidentifiedImageError:
        raise BadFile(f"{show(path)}: not an image (JPEG, PNG, BMP or GIF)") from None
    except Exception as e:  # noqa: BLE001 (PIL raises many types)
        raise BadFile(f"{show(path)}: a damaged image header "
                      f"({type(e).__name__}: {str(e)[:120]})") from None
    if fmt not in PHOTO_FORMATS:
        raise BadFile(f"{show(path)}: {fmt} images are not read; use JPEG, "
                      "PNG, BMP or GIF")
    if width * height > max_pixels:
        raise BadFile(f"{show(path)}: {width} x {height} pixels (from its "
                      f"header), more than the limit of {max_pixels}")
    if width == 0 or height == 0:
        raise BadFile(f"{show(path)}: an empty ({width} x {height}) image")
    return height, width, orientation if orientation in _ORIENT else 1


def _decode(data, path, channels):
    try:
        return decode.decode_pixels(data, channels).numpy()
    except tf.errors.OpError as e:
        reason = (str(e.message).strip().splitlines() or ["?"])[0]
        raise BadFile(f"{show(path)}: cannot be decoded ({reason[:160]})") from None


def read_photo(path):
    """uint8 [H, W, 3], upright (EXIF orientation applied), else BadFile."""
    data = read_bytes(path)
    _, _, orientation = header(data, path)
    pixels = _decode(data, path, 3)
    return np.ascontiguousarray(_ORIENT.get(orientation, lambda a: a)(pixels))


def read_mask(path, image_shape=None):
    """uint8 {0, 1} [H, W] by the package's mask rule (0/255 or 0/1 per
    mask, `decode.binarize_mask`), upright; BadFile if it is not binary, is
    a 16-bit PNG, or (given `image_shape`) differs in size from its image."""
    from efficientlab_tf.data import validate

    data = read_bytes(path)
    _, _, orientation = header(data, path)
    if decode.png_bit_depth(path) == 16:
        raise BadFile(f"{show(path)}: a 16-bit PNG mask; save masks as 8-bit "
                      "PNGs (values 0/255 or 0/1)")
    mask = _ORIENT.get(orientation, lambda a: a)(_decode(data, path, 1))[..., 0]
    problem = validate.mask_values_problem(np.unique(mask))
    if problem:
        raise BadFile(f"{show(path)}: {problem}")
    if image_shape is not None and mask.shape != tuple(image_shape[:2]):
        raise BadFile(
            f"{show(path)}: mask size {mask.shape[1]} x {mask.shape[0]} differs "
            f"from its image's {image_shape[1]} x {image_shape[0]} (width x "
            "height, after EXIF orientation); masks are never stretched")
    return binarize(mask)


def binarize(mask):
    """uint8 {0, 1} of a 0/1 or 0/255 mask: `decode.binarize_mask`'s rule
    (a mask whose largest value is <= 1 is a 0/1 mask) on a numpy array."""
    threshold = 1 if mask.max(initial=0) <= 1 else decode.MASK_THRESHOLD
    return (mask >= threshold).astype(np.uint8)


def to_network(pixels, size):
    """uint8 [H, W, 3] -> uint8 [S, S, 3], bilinear with antialiasing."""
    out = tf.image.resize(tf.convert_to_tensor(pixels, tf.uint8), [size, size],
                          method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(out, 0, 255)), tf.uint8).numpy()


def mask_to_network(mask, size):
    """uint8 {0, 1} [H, W] -> uint8 {0, 1} [S, S] (area-weighted, >= 0.5)."""
    out = tf.image.resize(tf.convert_to_tensor(mask, tf.float32)[..., None],
                          [size, size], method="bilinear", antialias=True)
    return (out[..., 0] >= 0.5).numpy().astype(np.uint8)


def to_photo_size(probabilities, height, width):
    """float32 [S, S] -> [height, width] probabilities (bilinear), as the
    served signatures resize theirs back to the input's size."""
    return tf.image.resize(tf.convert_to_tensor(probabilities)[..., None],
                           [height, width], method="bilinear")[..., 0].numpy()


def check_image(image, name):
    """uint8 [H, W, 3] or a TypeError/ValueError naming `name`."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 [H, W, 3] (0-255 pixels); got "
                        f"{array.dtype}. Convert float images with "
                        "np.clip(x * 255, 0, 255).astype(np.uint8) if they "
                        "are in [0, 1].")
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"{name} must have shape [H, W, 3] with H, W >= 1; got "
                         f"{array.shape}.")
    return array


def check_mask(mask, name, image_shape):
    """uint8 {0, 1} [H, W] of a 0/1 or 0/255 mask of the image's size, else
    a TypeError/ValueError naming `name` (no cast, no stretch)."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (0/1 or 0/255) or bool; got "
                        f"{array.dtype}.")
    if array.shape != tuple(image_shape[:2]):
        raise ValueError(f"{name} has shape {array.shape}; its image is "
                         f"{tuple(image_shape[:2])} (masks are never stretched).")
    from efficientlab_tf.data import validate

    problem = validate.mask_values_problem(np.unique(array))
    if problem:
        raise ValueError(f"{name} must hold 0/1 or 0/255 values: {problem}.")
    return binarize(array)


def read_support(folder, skip_bad=False):
    """(images, masks, bad lines) of a folder of <n>.jpg + <n>.png pairs,
    read here (one decode each, upright, masks of the image's size).

    Raises:
        fss1000.BadExamplesError: bad pairs, unless `skip_bad` (then listed).
        FileNotFoundError: no usable pair.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"support folder {folder!r} is not a folder.")
    pairs, problems = fss1000.scan_class(folder)
    images, masks = [], []
    for image_path, mask_path in pairs:
        try:
            image = read_photo(image_path)
            mask = read_mask(mask_path, image.shape)
        except BadFile as e:
            problems.append(str(e))
            continue
        if not mask.any():
            problems.append(f"{show(mask_path)}: all background (no "
                            "target pixel to learn from)")
            continue
        images.append(image)
        masks.append(mask)
    problems = [show(p) for p in problems]  # Any file name can be reported.
    fss1000.report(problems, folder, skip_bad)
    if not images:
        raise FileNotFoundError(f"no usable image/mask pairs in {folder!r}.")
    return images, masks, problems if skip_bad else []


def mask_names(image_paths):
    """{image path: `<name>_mask.png`}, one distinct file per distinct image.

    The name is the image's stem; images whose stems collide (`a/x.jpg`,
    `b/x.png`) are named by their path below the images' common folder
    instead, separators as `__` and the extension kept (`a__x.jpg_mask.png`),
    so no mask overwrites another (nor on a case-insensitive file system:
    a name taken in any letter case gets a number).
    """
    unique = list(dict.fromkeys(os.path.abspath(p) for p in image_paths))
    stems = [os.path.splitext(os.path.basename(p))[0] for p in unique]
    lowered = [s.lower() for s in stems]
    common = os.path.commonpath(unique) if len(unique) > 1 else None
    names, taken = {}, set()
    for path, stem in zip(unique, stems):
        if lowered.count(stem.lower()) > 1:  # IMG_1.JPG and img_1.jpg too.
            stem = os.path.relpath(path, common).replace(os.sep, "__")
        name, n = f"{stem}_mask.png", 2
        while name.lower() in taken:  # `a__x.jpg` beside `a/x.jpg`, ...
            name, n = f"{stem}_{n}_mask.png", n + 1
        taken.add(name.lower())
        names[path] = name
    return {p: names[os.path.abspath(p)] for p in image_paths}


def write_mask_png(mask, path):
    """Writes a {0, 1} mask as a 0/255 PNG, atomically."""
    with storage.atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255,
                        "L").save(tmp, format="PNG")


def show(path):
    """A printable form of any file name (undecodable bytes escaped)."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return path.encode("utf-8", "backslashreplace").decode("utf-8") \
        if _has_surrogates(path) else path


def _has_surrogates(text):
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
