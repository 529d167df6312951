"""Recipes: the shipped flagfiles (`flags/*.flags`), installed with the
package as `efficientlab_tf.recipes`, addressable without a checkout.

`--recipe=NAME` (or `--flagfile=@NAME`) puts the recipe's flags at that
place of the command line, as absl's `--flagfile` would: later flags win.
A recipe's own `--flagfile=flags/<name>.flags` lines name other recipes and
are read from the recipes folder, wherever the package is installed.
Relative paths inside a recipe (e.g. `--data_dir`) are, as with any
flagfile, relative to the current folder: the shipped ones assume a
checkout's root, and `--data_dir=...` after the recipe overrides them.
"""

import importlib.util
import os
import re

_INCLUDE = re.compile(r"^--flagfile=(?:@|flags/)([\w.-]+?)(?:\.flags)?$")
_RECIPE_ARG = re.compile(r"^--(?:recipe=|flagfile=@)([\w.-]+?)(?:\.flags)?$")


def recipes_dir():
    """The folder of the recipes: the installed `efficientlab_tf/recipes`,
    or, in a source checkout, its `flags/`."""
    spec = importlib.util.find_spec("efficientlab_tf.recipes")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if os.path.isdir(folder):
                return folder
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "flags")
    if os.path.isdir(checkout):
        return checkout
    raise FileNotFoundError("the recipes (efficientlab_tf/recipes) are not "
                            "installed; reinstall efficientlab-tf.")


def names():
    return sorted(n[:-len(".flags")] for n in os.listdir(recipes_dir())
                  if n.endswith(".flags"))


def path(name):
    """The file of recipe `name` (ValueError naming the recipes if none)."""
    file = os.path.join(recipes_dir(), f"{name}.flags")
    if not os.path.isfile(file):
        raise ValueError(f"no recipe {name!r}; recipes: {', '.join(names())} "
                         "(`efficientlab recipes` lists them).")
    return file


def header(name):
    """The recipe's leading comment lines, without the '# '."""
    lines = []
    for line in open(path(name)):
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def expand(name, seen=()):
    """The recipe's flags as command-line arguments, includes expanded."""
    if name in seen:
        raise ValueError(f"recipe {name!r} includes itself ({' -> '.join(seen)}).")
    args = []
    for line in open(path(name)):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = _INCLUDE.match(line)
        if include:
            args.extend(expand(include.group(1), seen + (name,)))
        else:
            args.append(line)
    return args


def expand_argv(argv):
    """argv with every `--recipe=NAME` / `--flagfile=@NAME` replaced by the
    recipe's flags."""
    out = []
    for arg in argv:
        match = _RECIPE_ARG.match(arg)
        out.extend(expand(match.group(1)) if match else [arg])
    return out


def listing():
    """`efficientlab recipes`: every recipe with its header."""
    blocks = []
    for name in names():
        text = header(name)
        first = re.sub(rf"^flags/{re.escape(name)}\.flags:\s*", "", text[0]) if text else ""
        rest = "".join(f"\n    {line}" for line in text[1:])
        blocks.append(f"{name}\n    {first}{rest}")
    from efficientlab_tf import shipped

    return (f"Recipes ({recipes_dir()}); use one with "
            "`efficientlab train --recipe=NAME`. The shipped model "
            f"({shipped.NAME}: `efficientlab segment` and `el.load()` without "
            f"a model) was made by {shipped.RECIPE}.\n\n"
            + "\n\n".join(blocks) + "\n")
