"""jcexp.records: reading a sweep directory, and the kind, label and recorded metrics of one run."""

import ast
import json
from pathlib import Path

import pytest

from jcexp import metrics
from jcexp.records import (
    by_model,
    collect_failures,
    is_joint,
    is_pruning_only,
    is_quant_only,
    label,
    method_names,
    parse_label,
    point,
    quant_method,
    read_sweep,
    tcr_key,
    with_errors,
)

JCEXP = Path(__file__).resolve().parents[1] / "jcexp"


def run(sparsity=0.0, bits=16, mask=None, pruner="sparsegpt", quant="gptq", case=None, fused=False, **extra):
    """A result dict as jcexp.record writes it, reduced to what records reads."""
    return {
        "model": {"name": extra.get("model", "m")},
        "compression": {
            "pruner": {"name": pruner, "sparsity": sparsity, "mask": mask, "fused": fused},
            "quant": {"name": quant, "bits": bits, "case": case},
        },
        "metrics": {"tcr": metrics.tcr(sparsity, bits), "sr": extra.get("sr"), "srcr": None},
        "measured": {"errors": extra.get("errors")},
    }


# (result, kind, label): every kind, N:M masks, non-default methods, one-pass, Case A and the joint mode.
CASES = [
    (run(), "dense", "dense"),
    (run(pruner="none", quant="none"), "dense", "dense"),
    (run(25), "pruning", "25%"),
    (run(50, mask="2:4"), "pruning", "2:4"),
    (run(0, 4), "quant", "4bit"),
    (run(0, 3, quant="rtn"), "quant", "3bit (rtn)"),
    (run(25, 4, case="B"), "joint", "25% 4bit"),
    (run(25, 3, mask="2:8", case="B"), "joint", "2:8 3bit"),
    (run(25, 4, pruner="wanda", case="B"), "joint", "25% 4bit (wanda)"),
    (run(25, 4, case="A"), "joint", "25% 4bit (case A)"),
    (run(25, 4, case="joint"), "joint", "25% 4bit (joint mode)"),
    (run(50, 4, mask="2:4", pruner="wanda", case="A"), "joint", "2:4 4bit (wanda, case A)"),
    (
        run(50, 4, pruner="onepass", quant="gptq_onepass", fused=True),
        "joint",
        "50% 4bit (onepass, gptq_onepass)",
    ),
    (run(12.5, 2, case="B"), "joint", "12.5% 2bit"),
]


@pytest.mark.parametrize(("result", "kind", "text"), CASES, ids=[c[2] for c in CASES])
def test_kind_and_label(result, kind, text):
    kinds = {"pruning": is_pruning_only(result), "quant": is_quant_only(result), "joint": is_joint(result)}
    assert [k for k, yes in kinds.items() if yes] == ([] if kind == "dense" else [kind])
    assert label(result) == text


@pytest.mark.parametrize(("result", "kind", "text"), CASES, ids=[c[2] for c in CASES])
def test_label_round_trip(result, kind, text):
    assert parse_label(label(result)) == (*point(result), method_names(result))
    sparsity, mask, bits, _ = parse_label(text)
    assert label(run(sparsity, bits, mask)) == text.partition(" (")[0]


def test_parse_label_reads_masks_as_their_sparsity_and_refuses_other_text():
    assert parse_label("2:8 3bit (rtn)") == (25.0, "2:8", 3, ["rtn"])
    assert parse_label("dense") == (0.0, None, 16, [])
    for bad in ("25 4bit", "fourbit", "2:x 4bit"):
        with pytest.raises(ValueError, match="not a run label"):
            parse_label(bad)


def test_quant_method_names_the_cases_that_are_not_the_papers_tool():
    assert quant_method(run(25, 4, case="B")) == "gptq"
    assert quant_method(run(25, 4, case="A")) == "gptq, case A"
    assert quant_method(run(25, 4, case="joint")) == "gptq, joint mode"


def test_equal_tcr_compares_equal_despite_float_noise():
    joint, quant_only = run(25, 4), run(0, 3)
    quant_only["metrics"]["tcr"] += 1e-12
    assert joint["metrics"]["tcr"] != quant_only["metrics"]["tcr"]
    assert tcr_key(joint) == tcr_key(quant_only) == 0.8125
    assert tcr_key(run(50, 4)) != tcr_key(joint)


def test_by_model_and_with_errors():
    runs = [run(25, model="b"), run(0, 4, model="a"), run(50, model="b", errors={"stages": {"prune": {}}})]
    groups = by_model(runs)
    assert list(groups) == ["a", "b"] and groups["b"] == [runs[0], runs[2]]
    assert with_errors(runs) == [runs[2]]
    assert with_errors([run(errors={"stages": {}})]) == []


def test_read_sweep_sorts_runs_into_results_failures_and_missing(tmp_path):
    def put(name, file, data):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / file).write_text(data if isinstance(data, str) else json.dumps(data))

    put("ok", "result.json", {"status": "complete", **run(25)})
    put("running", "result.json", {"status": "running"})
    put("corrupt", "result.json", "{not json")
    put("listed", "result.json", "[1, 2]")
    put("failed", "failure.json", {"overrides": ["quant.bits=2", "pruner.sparsity=50"], "cause": "OOM"})
    put("unnamed", "failure.json", "{not json")
    put("retried", "failure.json", {"cause": "an earlier attempt"})
    put("retried", "result.json", {"status": "complete", **run(0, 4)})
    (tmp_path / "died" / ".hydra").mkdir(parents=True)

    sweep = read_sweep(tmp_path)
    assert [label(r) for r in sweep.results] == ["25%", "4bit"]
    assert sweep.failures == collect_failures(tmp_path)
    assert [(f["point"], f["cause"]) for f in sweep.failures] == [
        ("quant.bits=2,pruner.sparsity=50", "OOM"),
        ("unnamed", "unknown"),
    ]
    assert sweep.missing == [str(tmp_path / d) for d in ("corrupt", "listed", "running", "died")]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import in the file, function bodies included."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "jcexp" if node.level else node.module or ""
            if node.level and node.module:
                base += "." + node.module
            found.append((base, id(node) in top))
            found += [(f"{base}.{a.name}", id(node) in top) for a in node.names]
    return found


def test_report_and_plots_read_runs_through_records_without_a_cycle():
    """plots draws from records alone; report composes records and plots at module level; records imports
    neither: one direction, no import hidden in a function."""
    report, plots, records = (_imports(JCEXP / f"{m}.py") for m in ("report", "plots", "records"))
    for imports in (report, plots):
        assert ("jcexp.records", True) in imports
        assert not [m for m, at_top in imports if m.startswith("jcexp") and not at_top]
    assert not [m for m, _ in plots if m == "jcexp.report" or m.startswith("jcexp.report.")]
    assert not [m for m, _ in records if m.split(".")[:2] in (["jcexp", "report"], ["jcexp", "plots"])]
