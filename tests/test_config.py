"""Each knob declared once (config.py): the flags, presets, aliases, the
flagfiles and `ExperimentConfig.build` all come from the declarations."""

import dataclasses
import glob
import os
import tempfile

import pytest
from absl import flags as absl_flags

from efficientlab_tf import config as config_lib
from efficientlab_tf.cli import flags as cli_flags
from efficientlab_tf.cli import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Config = config_lib.ExperimentConfig


def parsed(*args):
    """A config from run_meta.py's command line `args` (fresh flags, run from
    the checkout so flagfiles' relative --flagfile lines resolve)."""
    values = absl_flags.FlagValues()
    cli_flags.define_flags(values)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        values(["run_meta.py", *args])
    finally:
        os.chdir(cwd)
    return parse.config_from_flags(values), values


def test_flag_is_section_prefix_plus_field_and_names_are_unique():
    names = []
    for knob in config_lib.knobs():
        section = Config
        for part in knob.path[:-1]:
            section = config_lib._hints(section)[part]
        own = knob.field.metadata["flag"]
        assert knob.name == (own or section.PREFIX + knob.path[-1]), knob
        assert knob.help.strip(), f"--{knob.name} has no help text"
        names += [knob.name, *knob.aliases]
    assert len(names) == len(set(names))
    # Explicit flag names are the documented exception, not a habit.
    assert [k.name for k in config_lib.knobs() if k.field.metadata["flag"]] == [
        "omega_file"]
    assert len(config_lib.knobs()) > 100


def test_flag_defaults_are_the_demo_preset():
    assert parsed()[0] == Config.demo()
    demo = Config.demo()
    # The preset's overrides, by hand: what makes the demo a CPU demo.
    assert (demo.model.image_size, demo.model.bn_mode, demo.meta.inner_lr,
            demo.meta.meta_iters) == (64, "batch", 0.05, 200)
    assert Config().meta.meta_iters == 50000  # The paper's values.


@pytest.mark.parametrize("preset", ["demo", "smoke"])
def test_synthetic_flagfiles_are_their_presets(preset):
    config, _ = parsed(f"--flagfile=flags/synthetic_{preset}.flags")
    assert config == Config.build(preset)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "flags", "*.flags"))))
def test_every_shipped_flagfile_parses(path):
    config, values = parsed(f"--flagfile={path}", "--data_dir=/data")
    # Every --name=value line of the file reached the config.
    for line in open(path):
        name, _, value = line.strip()[2:].partition("=")
        if line.startswith("--") and name not in ("flagfile", "data_dir"):
            assert values[name].present, (path, name)
    assert config.run.mode == "train"


def test_old_flag_names_still_work():
    config, _ = parsed("--augment_noise=3", "--augment_erase=0.5",
                       "--pascal_episodes=7", "--sweep_points=4",
                       "--random_steps_factor=2")
    assert config.data.augment.noise_stddev == 3.0
    assert config.data.augment.erase_prob == 0.5
    assert config.eval.episodes == 7
    assert config.uho.sweep_points == 4
    assert config.compare.random_steps_factor == 2


def test_written_flagfile_repeats_the_run():
    config, values = parsed("--algo=reptile", "--eval_shots_list=1,2,3",
                            "--compare_omega_files=a=x.json,b=y.json",
                            "--augment_noise=2", "--uho_seed=9")
    path = os.path.join(tempfile.mkdtemp(), "flags.txt")
    parse.write_flagfile(path, values)
    text = open(path).read()
    assert "--augment_noise=" not in text  # Aliases are not written twice.
    again, _ = parsed(f"--flagfile={path}")
    assert again == config
    assert config.meta.foml_tail is None  # Reptile has no tail.
    assert config.compare.omega_file_rows == (("a", "x.json"), ("b", "y.json"))
    assert config.uho.seed == 9


def test_build_takes_keywords_and_refuses_with_the_flag_named():
    config = Config.build("demo", meta_iters=7, eval_shots_list=[1, 3])
    assert (config.meta.meta_iters, config.eval.shots_list) == (7, (1, 3))
    assert config.model.image_size == 64
    with pytest.raises(ValueError, match="unknown knob 'inner_lrr'; did you mean inner_lr"):
        Config.build(inner_lrr=0.1)
    with pytest.raises(ValueError, match=r"`--meta_iters` must be an integer; got '5' \(str\)"):
        Config.build(meta_iters="5")
    with pytest.raises(ValueError, match="`--meta_iters` must be positive; got 0"):
        Config.build(meta_iters=0)
    with pytest.raises(ValueError, match="`--inner_lr` must be a finite number"):
        Config.build(inner_lr=float("nan"))
    with pytest.raises(ValueError, match="`--fpk_shots` must be positive"):
        Config.build(fpk_shots=[1, 0], fpk_iters=[1, 1])
    with pytest.raises(ValueError, match="`--encoder` must be one of"):
        Config.build(encoder="resnet50")
    with pytest.raises(ValueError, match="preset must be one of"):
        Config.build("fast")
    with pytest.raises(ValueError, match=r"--uho_lr_min=0.5 --uho_lr_max=0.1"):
        Config.build(uho_lr_min=0.5, uho_lr_max=0.1)


def test_omega_file_applies_through_build(tmp_path):
    path = tmp_path / "omega.json"
    path.write_text('{"lr": 0.02, "steps": 9, "batch_size": 4}')
    config = Config.build("demo", omega_file=str(path))
    assert config.eval_omega == dataclasses.replace(
        config.train_omega, lr=0.02, steps=9, batch_size=4)
    assert config.eval.omega_file == str(path)
    with pytest.raises(FileNotFoundError, match="--omega_file"):
        Config.build(omega_file=str(tmp_path / "missing.json"))


def test_resume_check_names_the_flag():
    assert config_lib.flag_for("meta", "meta_optimizer") == "meta_optimizer"
    assert config_lib.flag_for("eval", "episodes") == "eval_episodes"
    assert config_lib.flag_for("model", "num_classes") == "num_classes"
