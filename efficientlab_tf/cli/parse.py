"""Flags -> ExperimentConfig, once; and the flagfile that repeats a run."""

from efficientlab_tf import config as config_lib
from efficientlab_tf import storage


def _value(knob, flag):
    """The flag's value in the knob's type (list flags arrive as strings)."""
    if knob.type is not tuple or knob.element is str:
        return flag.value
    try:
        return tuple(knob.element(v) for v in flag.value)
    except ValueError:
        raise ValueError(f"--{knob.name} must be comma-separated "
                         f"{knob.element.__name__}s; got "
                         f"{','.join(flag.value)}.") from None


def config_from_flags(f):
    """ExperimentConfig from parsed flags (ValueError/FileNotFoundError on
    bad values; --omega_file is read here and recorded in eval.omega_file)."""
    return config_lib.ExperimentConfig.build(
        **{k.name: _value(k, f[k.name]) for k in config_lib.knobs()})


def package_flag_names(f=None):
    """Names of the package's flags (aliases left out), in declaration order."""
    return [k.name for k in config_lib.knobs()]


def write_flagfile(path, f):
    """Writes the package's flags in flagfile format (atomically)."""
    lines = [f"# Resolved flags of this run; repeat with --flagfile={path}"]
    for name in package_flag_names():
        text = f[name].serialize()
        if text:
            lines.append(text)
    storage.write_text(path, "\n".join(lines) + "\n")
