"""`segment` as a tool (issue 34): arrays end to end, one adaptation per
chunk, each photo answered alone, ordinary photos read right, every bad file
one line while the rest runs. Each case failed before its fix."""

import json
import os
import shutil
import tempfile
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientlab_tf import runners
from efficientlab_tf.config import ExperimentConfig
from efficientlab_tf.config import ExportConfig
from efficientlab_tf.config import Omega
from efficientlab_tf.export import photos
from efficientlab_tf.export.saved_model import export_saved_model
from efficientlab_tf.export.segmenter import Segmenter
from efficientlab_tf.segmentation import build_adapter
from tests import helpers

SHARED = os.path.join(helpers.ROOT, "..", "shared", "data", "realfss-train")

# Exports a model and runs segment end to end, test by test (about 90 s in all).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export():
    """A tiny batch-statistics export with small request limits."""
    model = helpers.tiny_efficientlab(bn_mode="batch")
    base = os.path.join(tempfile.mkdtemp(), "m")
    export_saved_model(model, base, 32, version=1,
                       few_shot_adapter=build_adapter(model, Omega(batch_size=2)),
                       omega=helpers.OMEGA,
                       limits=ExportConfig(max_request_images=6, max_request_steps=10))
    return base


def _rgb(h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _support_dir(pairs=3, size=(40, 32)):
    folder = tempfile.mkdtemp()
    for i in range(pairs):
        Image.fromarray(_rgb(*size, seed=i)).save(os.path.join(folder, f"{i}.jpg"))
        mask = np.zeros(size, np.uint8)
        mask[size[0] // 4: 3 * size[0] // 4, size[1] // 4: 3 * size[1] // 4] = 255
        Image.fromarray(mask).save(os.path.join(folder, f"{i}.png"))
    return folder


def _segment(base, support, images, out_dir, **knobs):
    return runners.run(ExperimentConfig.build(
        "paper", mode="segment", segment_model=base, segment_support=support,
        segment_images=list(images), segment_out_dir=out_dir, **knobs))


# --- adapt once, predict each photo alone --------------------------------------

def test_a_photos_mask_does_not_depend_on_its_chunk(export):
    # --bn_mode=batch: before, the queries of one few_shot request were
    # normalised together, so a photo's mask changed with its company.
    segmenter = Segmenter(export)
    images = [_rgb(40, 32, 1), _rgb(24, 56, 2)]
    masks = [(np.arange(40 * 32).reshape(40, 32) % 3 == 0).astype(np.uint8),
             np.pad(np.ones((12, 20), np.uint8), ((6, 6), (18, 18)))]
    queries = [_rgb(20 + 7 * i, 30 + 5 * i, 10 + i) for i in range(5)]
    together = segmenter.segment(images, masks, queries, chunk=5)
    for query, mask in zip(queries, together):
        alone = segmenter.segment(images, masks, [query], chunk=1)[0]
        np.testing.assert_array_equal(mask, alone)
        assert mask.shape == query.shape[:2]


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is absent")
def test_real_photos_of_different_sizes_chunked_equal_one_per_request(export):
    segmenter = Segmenter(export)
    folder = os.path.join(SHARED, "horse")
    images, masks, _ = photos.read_support(folder)
    # Real photos cut to different sizes and aspect ratios.
    queries = [images[5][:150, :], images[6][:, 30:], images[7][20:200, 10:120],
               images[8]]
    support_images, support_masks = images[:3], masks[:3]
    together = segmenter.segment(support_images, support_masks, queries, chunk=4)
    for query, mask in zip(queries, together):
        np.testing.assert_array_equal(
            mask, segmenter.segment(support_images, support_masks, [query], chunk=1)[0])


# --- ordinary photos go right ---------------------------------------------------

def test_exif_orientation_is_applied_to_photos_and_masks(export, tmp_path):
    # 40 tall, 24 wide, as a viewer shows it: smooth ramps (JPEG keeps them).
    rows, cols = np.mgrid[0:40, 0:24]
    upright = np.stack([rows * 6, cols * 10, np.full_like(rows, 128)], -1).astype(np.uint8)
    stored = np.rot90(upright, 1)  # The camera stored it sideways (24 x 40) ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 CW to display".
    path = str(tmp_path / "phone.jpg")
    Image.fromarray(stored).save(path, quality=100, exif=exif.tobytes())
    read = photos.read_photo(path)
    assert read.shape == (40, 24, 3)
    assert np.abs(read.astype(int) - upright.astype(int)).mean() < 6  # JPEG noise.
    out = tmp_path / "out"
    _segment(export, _support_dir(), [path], str(out))
    assert np.asarray(Image.open(out / "phone_mask.png")).shape == (40, 24)


def test_a_16_bit_grey_png_is_decoded_as_training_decodes_it(tmp_path):
    # PIL's convert("RGB") clipped 16-bit values: 99.6% white before.
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    path = str(tmp_path / "grey16.png")
    Image.fromarray(ramp).save(path)
    read = photos.read_photo(path)
    expected = np.round(ramp.astype(np.float64) * 255 / 65535)  # TF's rule.
    np.testing.assert_allclose(read[..., 0], expected, atol=1)
    assert (read == 255).mean() < 0.01


def test_arrays_of_the_wrong_kind_are_refused_by_name(export):
    segmenter = Segmenter(export)
    image, mask = _rgb(16, 16), np.ones((16, 16), np.uint8)
    with pytest.raises(TypeError, match=r"support_images\[0\] must be uint8"):
        segmenter.segment([image.astype(np.float32) / 255], [mask], [image])
    with pytest.raises(TypeError, match=r"support_masks\[0\] must be uint8"):
        segmenter.segment([image], [mask.astype(np.float32)], [image])
    with pytest.raises(ValueError, match=r"support_masks\[0\] must hold 0/1 or 0/255"):
        segmenter.segment([image], [(mask * 128).astype(np.uint8)], [image])
    with pytest.raises(ValueError, match=r"support_masks\[0\] has shape \(8, 8\); "
                       r"its image is \(16, 16\)"):
        segmenter.segment([image], [np.ones((8, 8), np.uint8)], [image])
    with pytest.raises(TypeError, match=r"query_images\[1\] must be uint8"):
        segmenter.segment([image], [mask], [image, image.astype(np.int64)])


def test_the_first_pair_does_not_set_the_size_of_the_others(export):
    # A thumbnail first used to shrink every pair to its size.
    segmenter = Segmenter(export)
    big = _rgb(64, 64, 4)
    big_mask = np.pad(np.ones((32, 32), np.uint8), 16)
    thumb, thumb_mask = big[::8, ::8], big_mask[::8, ::8]
    both = segmenter.support([thumb, big], [thumb_mask, big_mask])
    alone = segmenter.support([big], [big_mask])
    np.testing.assert_array_equal(both[0][1], alone[0][0])
    np.testing.assert_array_equal(both[1][1], alone[1][0])


# --- every bad input is one line and the rest still runs ------------------------

def test_bad_photos_are_listed_and_the_rest_segmented(export, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_rgb(24, 24)).save(folder / "good.jpg")
    # A 140-byte PNG that declares 12000 x 12000 pixels.
    png = bytearray(open(_png(tmp_path), "rb").read())
    png[16:24] = (12000).to_bytes(4, "big") * 2
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # IHDR's CRC.
    (folder / "huge.png").write_bytes(bytes(png))
    os.mkfifo(folder / "pipe.jpg")  # Would block the read forever.
    os.symlink("/dev/zero", folder / "zero.jpg")  # Would read until memory ends.
    weird = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")  # Not UTF-8.
    with open(weird, "wb") as f:
        f.write(b"not an image")
    out = tmp_path / "out"
    result = _segment(export, _support_dir(), [str(folder)], str(out))
    assert len(result["masks"]) == 1
    listed = (out / "bad_files.txt").read_text()
    for expected in ("huge.png: 12000 x 12000 pixels", "pipe.jpg: not a regular file",
                     "zero.jpg: not a regular file", "caf\\udce9.jpg: not an image"):
        assert expected in listed, listed


def _png(tmp_path):
    path = str(tmp_path / "tiny.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    return path


def test_limits_of_the_export_are_checked_before_the_first_request(export, tmp_path):
    segmenter = Segmenter(export)
    image, mask = _rgb(16, 16), np.ones((16, 16), np.uint8)
    with pytest.raises(ValueError, match="7 support pairs, more than the 6 one "
                       "request of this export takes"):
        segmenter.segment([image] * 7, [mask] * 7, [image])
    with pytest.raises(ValueError, match="outside this export's limits"):
        segmenter.segment([image], [mask], [image], lr=0.1, steps=11)
    omega = tmp_path / "omega.json"
    omega.write_text(json.dumps({"lr": 0.1, "steps": 50}))
    photo = tmp_path / "p.jpg"
    Image.fromarray(image).save(photo)
    with pytest.raises(ValueError, match="50 steps are outside"):
        _segment(export, _support_dir(), [str(photo)], str(tmp_path / "o"),
                 omega_file=str(omega))


def test_unloadable_and_foreign_models_are_one_error(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a loadable SavedModel"):
        Segmenter(str(garbage))
    foreign = str(tmp_path / "foreign")
    module = tf.Module()
    module.f = tf.function(lambda x: x + 1,
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, foreign, signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="not an EfficientLab export"):
        Segmenter(foreign)


def test_bad_support_pairs_are_skipped_with_skip_bad_examples(export, tmp_path):
    support = _support_dir(pairs=3)
    Image.fromarray(np.zeros((20, 20), np.uint8) + 7).save(os.path.join(support, "1.png"))
    photo = tmp_path / "p.jpg"
    Image.fromarray(_rgb(16, 16)).save(photo)
    with pytest.raises(ValueError, match="pass --skip_bad_examples"):
        _segment(export, support, [str(photo)], str(tmp_path / "a"))
    result = _segment(export, support, [str(photo)], str(tmp_path / "b"),
                      skip_bad_examples=True)
    assert len(result["masks"]) == 1
    assert "1.png" in (tmp_path / "b" / "bad_files.txt").read_text()


# --- names and folders ------------------------------------------------------------

def test_names_and_folders(export, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_rgb(16, 16)).save(folder / "dog [1].jpg")  # Not a glob.
    Image.fromarray(_rgb(16, 16)).save(folder / "IMG_1.JPG")  # Camera case ...
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "IMG_1.png")  # ... its mask.
    (folder / "x_mask.png").write_bytes(b"the user's own file")
    support = _support_dir()
    with pytest.raises(ValueError, match="is inside the input folder"):
        _segment(export, support, [str(folder)], str(folder))
    with pytest.raises(ValueError, match="is inside the input folder"):
        _segment(export, support, [str(folder)], str(folder / "masks"))
    out = tmp_path / "out"
    result = _segment(export, support, [str(folder / "dog [1].jpg"), str(folder)],
                      str(out))
    assert sorted(os.path.basename(m) for m in result["masks"]) == [
        "IMG_1_mask.png", "dog [1]_mask.png"]
    assert (folder / "x_mask.png").read_bytes() == b"the user's own file"
    assert sorted(os.listdir(out / ".efficientlab")) == [
        ".lock", "config_segment.json"]
    assert not {".lock", "config_segment.json"} & set(os.listdir(out))


def test_mask_names_are_distinct_in_any_letter_case():
    names = photos.mask_names(["/a/x.jpg", "/b/X.jpg", "/c/a__x.jpg"])
    lowered = [n.lower() for n in names.values()]
    assert len(set(lowered)) == 3, names


# --- what annotation users expect -------------------------------------------------

def test_segments_csv_and_coco_annotations_decode_to_the_masks(export, tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(24, 40), (33, 17)]):
        Image.fromarray(_rgb(*size, seed=i)).save(folder / f"p{i}.jpg")
    support = _support_dir()
    out = tmp_path / "out"
    _segment(export, support, [str(folder)], str(out), segment_coco=True)
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": os.path.basename(support)}]
    rows = (out / "segments.csv").read_text().splitlines()
    assert rows[0] == "photo,mask,height,width,foreground_fraction,confidence"
    for image, annotation, row in zip(coco["images"], coco["annotations"], rows[1:]):
        mask = np.asarray(Image.open(out / row.split(",")[1])) // 255
        rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle), mask)
        assert (image["height"], image["width"]) == mask.shape
        fields = row.split(",")
        assert float(fields[4]) == pytest.approx(mask.mean(), abs=1e-4)
        assert 0.5 <= float(fields[5]) <= 1.0
