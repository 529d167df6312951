"""Pictures: prediction grids (paper Figure 4) and the learning-rate sweep
(paper Figure 2), the adaptation curve. Grids need only TensorFlow and write
PNGs; the plots use matplotlib (a dependency).
"""


import tensorflow as tf
from efficientlab_tf import storage
from efficientlab_tf.evaluation import compare


def overlay(images, masks, probs):
    """float [N,S,S,3] 0-255, GT [N,S,S,1], probs [N,S,S] -> [N,S,S,3] in [0,1].

    Prediction in red, ground truth in green (overlap yellow).
    """
    gt = masks[..., 0]
    pred = tf.cast(probs >= 0.5, tf.float32)
    colour = tf.stack([pred, gt, tf.zeros_like(gt)], axis=-1)
    return 0.6 * images / 255.0 + 0.4 * colour


def prediction_grid(task, query_probs):
    """Top row: support images with their masks; bottom: query predictions.

    Returns float32 [2 S, max(K, Q) S, 3] in [0, 1].
    """
    support = overlay(task.support_images, task.support_masks,
                      tf.zeros(tf.shape(task.support_masks)[:3]))
    query = overlay(task.query_images, task.query_masks, query_probs)
    width = max(support.shape[0], query.shape[0]) * support.shape[2]

    def row(x):
        x = tf.concat(tf.unstack(x), axis=1)
        return tf.pad(x, [[0, 0], [0, width - x.shape[1]], [0, 0]])

    return tf.concat([row(support), row(query)], axis=0)


def write_png(grid, path):
    """Writes a [H, W, 3] float grid in [0, 1] as a PNG, atomically."""
    data = tf.io.encode_png(tf.cast(tf.clip_by_value(grid, 0, 1) * 255 + 0.5,
                                    tf.uint8))
    storage.write_text(path, data.numpy())


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    return plt


def lr_sweep_plot(rows, train_lr, path):
    """Mean IoU against the inner lr, points coloured by early-stopped steps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    points = ax.scatter([r["lr"] for r in rows], [r["mean_iou"] for r in rows],
                        c=[r["best_steps"] for r in rows], cmap="viridis", s=40)
    ax.plot([r["lr"] for r in rows], [r["mean_iou"] for r in rows], color="0.7",
            zorder=0)
    ax.axvline(train_lr, color="0.4", linestyle="--", linewidth=1,
               label=f"training lr {train_lr:g}")
    ax.set_xscale("log")
    ax.set_xlabel("inner learning rate")
    ax.set_ylabel("mean query IoU")
    fig.colorbar(points, ax=ax, label="early-stopped steps")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def curve_plot(tables, path, reference=None):
    """The adaptation curve: mean IoU (95% CI band) against steps, one panel
    per shot count, one line per initialization; `tables` {shots: rows}
    with curve rows (`compare.curve_rows`). A dotted line marks
    `reference`'s IoU after its last step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.6),
                             dpi=120, squeeze=False)
    for ax, (shots, rows) in zip(axes[0], tables.items()):
        curves = compare.curve_rows(rows)
        for init, curve in curves.items():
            x = [r["steps"] for r in curve]
            y = [r["mean_iou"] for r in curve]
            ci = [r["ci95"] for r in curve]
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=init)
            ax.fill_between(x, [a - b for a, b in zip(y, ci)],
                            [a + b for a, b in zip(y, ci)],
                            color=line.get_color(), alpha=0.12, linewidth=0)
        if reference in curves:
            ax.axhline(curves[reference][-1]["mean_iou"], color="0.3",
                       linestyle=":", linewidth=1)
        ax.set_xscale("symlog", linthresh=1)  # Step 0 on a log-like axis.
        ticks = sorted({r["steps"] for curve in curves.values() for r in curve})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel("mean query IoU")
        ax.set_title(f"{shots}-shot, {len(rows[0]['per_task'])} tasks")
    axes[0][-1].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
