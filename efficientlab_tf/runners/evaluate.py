"""--mode=evaluate: the FSS-1000 protocol on meta-test classes.

Every meta-test class, `eval.draws` random support/query draws each, for
every k of `eval.shots_list`: adapt with U and omega, predict the queries,
reset everything. Writes eval/eval_<k>shot.{csv,json} (per-class IoU per
draw), optional prediction grids, and eval/summary.json. On PASCAL-5i it
adds the literature's report (`evaluation/pascal_report.py`).
"""

import json
import os

from absl import logging

from efficientlab_tf import storage
from efficientlab_tf.evaluation import plots
from efficientlab_tf.evaluation import protocol
from efficientlab_tf.runners.common import experiment_with_weights


def run(config, record_fn, model=None):
    record_fn(config)
    exp, loaded = experiment_with_weights(config, model)
    omega = config.eval_omega
    out_dir = os.path.join(config.run.workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    summary = {"weights": loaded, "omega": omega.to_dict(),
               "draws": config.eval.draws}
    eval_fn = exp.eval_fn(omega)
    for k in config.eval.shots_list:
        query = config.data.query_shots
        tasks = exp.source.class_tasks("test", k, query, config.eval.seed,
                                       config.eval.draws)
        if config.eval.augment and config.data.augment.enabled:
            tasks = tasks.enumerate().map(
                lambda i, ct: (ct[0], exp.augment_support(ct[1], config.eval.seed, i)))
        names = exp.source.class_names("test", k + query)

        def picture(i, name, task, probs, k=k):
            if i < config.eval.pictures:
                plots.write_png(plots.prediction_grid(task, probs), os.path.join(
                    out_dir, f"pictures_{k}shot_{i:03d}_{name}.png"))

        result = protocol.evaluate_by_class(
            eval_fn, tasks, names, omega.lr, omega.steps, seed=config.eval.seed,
            name=f"{k}-shot", picture_fn=picture,
            parallel=config.eval.parallel)
        stem = os.path.join(out_dir, f"eval_{k}shot")
        protocol.write_per_class_csv(result, stem + ".csv")
        storage.write_json(stem + ".json", result)
        summary[f"{k}-shot"] = {key: result[key] for key in
                                ("mean_iou", "ci95", "tasks", "tasks_per_second")}
        logging.info("%d-shot: mean IoU %.4f +- %.4f over %d tasks (%d classes x "
                     "%d draws), %.2f tasks/s -> %s.csv", k, result["mean_iou"],
                     result["ci95"], result["tasks"], len(names),
                     config.eval.draws, result["tasks_per_second"], stem)
        if config.data.dataset == "pascal5i":
            from efficientlab_tf.evaluation import pascal_report

            report = pascal_report.run_episodes(exp, eval_fn, omega, k,
                                                config.eval.episodes)
            summary[f"{k}-shot"]["pascal5i"] = report
            logging.info("%d-shot PASCAL-5i (%d episodes): class-wise mIoU "
                         "%.4f, FB-IoU %.4f", k, config.eval.episodes,
                         report["miou"], report["fb_iou"])
    storage.write_json(os.path.join(out_dir, "summary.json"), summary)
    print(json.dumps(summary, indent=2))
    return summary
