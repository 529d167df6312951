"""The absl flags of run_meta.py, generated from the knobs of `config.py`.

The only module that defines flags. Each knob becomes one flag of its type
(enum where it has choices, list for tuples) with its help text; defaults
are the demo preset (`config.PRESETS["demo"]`), so `python run_meta.py
--algo=fomaml` runs it; aliases keep older flag names working.
"""

from absl import flags

from efficientlab_tf import config as config_lib

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string,
           tuple: flags.DEFINE_list}


def define_flags(flag_values=flags.FLAGS):
    """Defines every flag of run_meta.py (idempotent)."""
    if "algo" in flag_values:
        return
    demo = config_lib.ExperimentConfig.demo()
    for knob in config_lib.knobs():
        default = demo
        for part in knob.path:
            default = getattr(default, part)
        if knob.choices and knob.type is str:
            flags.DEFINE_enum(knob.name, default, knob.choices, knob.help,
                              flag_values=flag_values)
        else:
            if knob.type is tuple:
                default = [str(v) for v in default]
            _DEFINE[knob.type](knob.name, default, knob.help,
                               flag_values=flag_values)
        for alias in knob.aliases:
            flags.DEFINE_alias(alias, knob.name, flag_values=flag_values)


def markdown():
    """docs/flags.md: one table per config section, from the knob declarations
    (flag, default of the demo preset / of the paper, what it is)."""
    demo, paper = config_lib.ExperimentConfig.demo(), config_lib.ExperimentConfig()
    sections = {}
    for knob in config_lib.knobs():
        sections.setdefault(knob.path[0], []).append(knob)

    def value(config, knob):
        for part in knob.path:
            config = getattr(config, part)
        if isinstance(config, tuple):
            config = ",".join(map(str, config))
        return "(none)" if config in (None, "") else f"`{config}`"

    out = ["# Flags", "",
           "Generated from the knob declarations of `efficientlab_tf/config.py` "
           "(`python -m efficientlab_tf.cli.flags > docs/flags.md`; "
           "`tests/test_docs.py` checks it is current). Defaults: the flag's "
           "(the demo preset) and the paper's where they differ. Flagfiles "
           "(`--flagfile=`, `--recipe=`) set many at once.", ""]
    for section, knobs in sections.items():
        out += [f"## {section}", "", "| flag | default | paper | what it is |",
                "|---|---|---|---|"]
        for knob in knobs:
            d, p = value(demo, knob), value(paper, knob)
            help_text = " ".join(knob.help.split()).replace("|", "\\|")
            choices = f" One of {', '.join(map(str, knob.choices))}." if knob.choices else ""
            out.append(f"| `--{knob.name}` | {d} | {p if p != d else ''} | "
                       f"{help_text}{choices} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
