"""The package as a new user gets it (issue 25): a wheel built from this
checkout (`pip wheel`, not editable), installed with `pip install --target`
into an empty folder and run from a folder that is not the checkout. The
installed `efficientlab` command lists the recipes, trains the smoke recipe
and segments a folder of photos; then every Python block of
docs/python_api.md runs, in order, against the installed package.

The wheel's dependencies are this environment's (`--no-deps`): CI already
installs them into a brand-new virtual environment (.ci/run), and a second
one here would double CI's install time. The check that the package
itself, its console scripts and its package data (the recipes) work without
the checkout is the point, and the test asserts that the installed copy, not
the checkout, is what runs."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from tests import helpers


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", open(path).read(), re.S)


def photo_folders(root):
    """support/: five <n>.jpg + <n>.png pairs of one class; photos/: three
    photos of it (discs on noise), and one file that is not a photo."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :64]
    os.makedirs(os.path.join(root, "support"))
    os.makedirs(os.path.join(root, "photos"))
    for n in range(1, 9):
        cy, cx, r = rng.uniform(14, 34), rng.uniform(14, 50), rng.uniform(6, 12)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        image = rng.uniform(0, 120, (48, 64, 3)) + 120 * disc[..., None]
        if n <= 5:
            Image.fromarray(image.astype(np.uint8)).save(
                os.path.join(root, "support", f"{n}.jpg"), quality=95)
            Image.fromarray(disc.astype(np.uint8) * 255, "L").save(
                os.path.join(root, "support", f"{n}.png"))
        else:
            Image.fromarray(image.astype(np.uint8)).save(
                os.path.join(root, "photos", f"photo{n}.jpg"), quality=95)
    with open(os.path.join(root, "photos", "notes.jpg"), "w") as f:
        f.write("not a photo")


@pytest.mark.slow  # Builds a wheel, trains twice, starts processes.
def test_the_installed_package_trains_segments_and_runs_the_docs():
    build = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", os.path.join(build, "wheel"), helpers.ROOT],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = os.listdir(os.path.join(build, "wheel"))
    site = os.path.join(build, "site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", site, os.path.join(build, "wheel", wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    work = tempfile.mkdtemp()  # Not the checkout.
    photo_folders(work)
    env = dict(os.environ, PYTHONPATH=site, CUDA_VISIBLE_DEVICES="-1",
               TF_CPP_MIN_LOG_LEVEL="3")

    def run(*args, timeout=600):
        proc = subprocess.run(list(args), cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    where = run(sys.executable, "-c", "import efficientlab_tf, sys; "
                "print(efficientlab_tf.__file__)").stdout.strip()
    assert where.startswith(site), where  # The wheel's copy, not the checkout.
    efficientlab = [sys.executable, os.path.join(site, "bin", "efficientlab")]
    listing = run(*efficientlab, "recipes").stdout
    assert os.path.join(site, "efficientlab_tf", "recipes") in listing
    assert "synthetic_smoke" in listing and "fss1000_fomaml_5shot" in listing
    # The command trains into the folder the docs then use: their
    # `el.train` resumes it at its last step (evaluates and exports again),
    # which spares this test a second training.
    run(*efficientlab, "train", "--recipe=synthetic_smoke", "--workdir=runs/smoke")
    assert os.path.isfile(os.path.join(work, "runs/smoke/saved_model/1/saved_model.pb"))
    proc = run(*efficientlab, "segment", "--segment_model=runs/smoke",
               "--segment_support=support", "--segment_images=photos",
               "--segment_out_dir=segmented")
    assert "notes.jpg" in proc.stderr  # Listed, not fatal.
    for n in (6, 7, 8):
        mask = Image.open(os.path.join(work, "segmented", f"photo{n}_mask.png"))
        assert mask.size == (64, 48)
        assert os.path.isfile(os.path.join(work, "segmented", f"photo{n}_overlay.png"))
    assert os.path.isfile(os.path.join(work, "segmented", "contact_sheet.png"))
    # Issue 33: no model argument: the shipped model, installed with the wheel.
    assert "was made by realfss62_ship" in listing
    proc = run(*efficientlab, "segment", "--segment_support=support",
               "--segment_images=photos", "--segment_out_dir=shipped")
    assert os.path.join(site, "efficientlab_tf", "models", "efficientlab_realfss62") \
        in proc.stdout, proc.stdout
    for n in (6, 7, 8):
        mask = Image.open(os.path.join(work, "shipped", f"photo{n}_mask.png"))
        assert mask.size == (64, 48)
    os.remove(os.path.join(work, "photos", "notes.jpg"))  # The docs' photos/.
    # docs/python_api.md, every block in order, in one process.
    script = os.path.join(work, "python_api.py")
    with open(script, "w") as f:
        f.write("\n\n".join(python_blocks(os.path.join(
            helpers.ROOT, "docs", "python_api.md"))))
    out = run(sys.executable, script).stdout
    assert "unknown knob 'meta_iter'; did you mean meta_iters" in out
    assert "runs/smoke/saved_model/2" in out  # Resumed, exported again.
    assert "[True, True, True]" in out
    assert "3 masks in" in out
    # The U-Net meta-learned discs: a new task's queries after 5 steps.
    assert float(re.search(r"new task IoU ([0-9.]+)", out).group(1)) > 0.8
    shutil.rmtree(build, ignore_errors=True)


def test_every_python_block_of_the_docs_is_found():
    blocks = python_blocks(os.path.join(helpers.ROOT, "docs", "python_api.md"))
    assert len(blocks) == 3 and "el.configure(" in blocks[0]
