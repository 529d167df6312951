"""REST request sizes: serve_bytes with {"b64": ...} vs raw-pixel JSON.

    python bench/request_sizes.py ../shared/data/realfss-train/dog/1.jpg

Prints the JSON body size of one request for the photo at its own size and
upscaled to 1024 x 1024 (bicubic, saved as JPEG quality 90, as a camera
photo of that size would be sent).
"""

import io as stdio
import json
import sys

import numpy as np
from PIL import Image

from efficientlab_tf.export import client


def sizes(image):
    buffer = stdio.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    encoded = buffer.getvalue()
    pixels = np.asarray(image.convert("RGB"), np.uint8)
    raw = len(json.dumps(client.rest_request_body(pixels)))
    b64 = len(json.dumps(client.rest_bytes_body([encoded])))
    return len(encoded), raw, b64


def main(path):
    photo = Image.open(path).convert("RGB")
    for name, image in ((f"{photo.width}x{photo.height}", photo),
                        ("1024x1024", photo.resize((1024, 1024), Image.BICUBIC))):
        jpeg, raw, b64 = sizes(image)
        print(f"{name}: JPEG {jpeg / 1024:.1f} KiB; raw-pixel JSON "
              f"{raw / 1024:.1f} KiB; b64 JSON {b64 / 1024:.1f} KiB "
              f"({raw / b64:.1f}x smaller)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         "../shared/data/realfss-train/dog/1.jpg")
