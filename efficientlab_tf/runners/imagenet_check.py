"""--mode=imagenet_check: top-5 check of the converted Lite0 ImageNet classifier."""

import os

from efficientlab_tf import storage
from efficientlab_tf.evaluation import imagenet_check
from efficientlab_tf.pretrained import lite


def run(config, record_fn, model=None):
    del model  # The check builds its own classifier.
    m = config.model
    if m.encoder != "efficientnet_lite0" or m.encoder_weights == "none":
        raise ValueError("--mode=imagenet_check needs --encoder=efficientnet_lite0 "
                         "and --encoder_weights=imagenet (or a .pth file).")
    if not config.data.data_dir:
        raise ValueError("--mode=imagenet_check needs --data_dir (FSS-1000 layout "
                         "with class folders such as dog, cat, bus).")
    record_fn(config)
    pth = None if m.encoder_weights == "imagenet" else m.encoder_weights
    classifier = lite.imagenet_classifier(pth_path=pth)

    def progress(done, total):
        print(f"\r{done}/{total} images", end="", flush=True)

    result = imagenet_check.top5_check(classifier, config.data.data_dir,
                                       progress=progress)
    print()
    lines = ["| class | top-5 hits | images |", "|---|---|---|"]
    for name, (hits, n) in result.by_class().items():
        lines.append(f"| {name} | {hits} | {n} |")
    hits = sum(r[2] for r in result.rows)
    lines.append(f"| **all** | **{hits}** | **{len(result.rows)}** |")
    print("\n".join(lines))
    print(f"top-5 kind hit rate: {result.rate:.3f} ({hits}/{len(result.rows)})")
    summary = {
        "rate": result.rate, "hits": hits, "images": len(result.rows),
        "by_class": result.by_class(),
        "rows": [{"class": c, "file": f, "hit": h, "top5": t}
                 for c, f, h, t in result.rows],
    }
    storage.write_json(os.path.join(config.run.workdir, "imagenet_check.json"), summary)
    return summary
