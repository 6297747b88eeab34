"""What the README promises a user who drops one YAML into conf/<group>/: the files it names ship, and its
drop-in example runs as is on the tiny model (the real llm-compressor and lm-eval)."""

import re

import pytest

from jcexp.run import run

from .conftest import ROOT, TINY


def test_every_conf_file_the_readme_names_ships():
    named = set(re.findall(r"conf/[\w/.-]+\.yaml", (ROOT / "README.md").read_text()))
    assert named, "the README names no conf file: nothing checked"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"README names files that do not ship: {missing}"


def test_the_readme_drop_in_pruner_runs(compose, tmp_path):
    result = run(
        compose(
            *TINY, "pruner=sparsegpt_damp05", "quant=none", "save_model=false", f"paths.cache_dir={tmp_path}"
        )
    )
    assert result["compression"]["pruner"]["dampening_frac"] == 0.05
    assert result["measured"]["sparsity"]["after_prune"] == pytest.approx(0.25, abs=0.01)
