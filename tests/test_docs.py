"""The documentation is true to the tree: every relative link resolves, the
flags reference is generated from the knob declarations, and the README
stays a front door (issue 36)."""

import os
import re

from tests import helpers

LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _markdown_files():
    files = [os.path.join(helpers.ROOT, "README.md"),
             os.path.join(helpers.ROOT, "BENCHMARKS.md")]
    for folder, _, names in os.walk(os.path.join(helpers.ROOT, "docs")):
        files += [os.path.join(folder, n) for n in names if n.endswith(".md")]
    shipped = os.path.join(helpers.ROOT, "saved_models")
    for folder, _, names in os.walk(shipped):
        files += [os.path.join(folder, n) for n in names if n.endswith(".md")]
    return files


def test_every_relative_link_resolves():
    broken = []
    for path in _markdown_files():
        for target in LINK.findall(open(path).read()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            if not os.path.exists(os.path.join(os.path.dirname(path), target)):
                broken.append(f"{os.path.relpath(path, helpers.ROOT)} -> {target}")
    assert not broken, broken


def test_the_flags_reference_is_current():
    from efficientlab_tf.cli import flags as cli_flags

    with open(os.path.join(helpers.ROOT, "docs", "flags.md")) as f:
        assert f.read() == cli_flags.markdown(), (
            "docs/flags.md is stale: python -m efficientlab_tf.cli.flags > docs/flags.md")


def test_the_readme_is_a_front_door():
    text = open(os.path.join(helpers.ROOT, "README.md")).read()
    assert len(text.splitlines()) <= 200
    # No commit hashes or issue numbers; no test counts to go stale.
    assert not re.search(r"\b[0-9a-f]{7}\b", text), re.findall(r"\b[0-9a-f]{7}\b", text)
    assert not re.search(r"[Ii]ssue \d+", text)
    assert not re.search(r"\d+ tests\b", text)
