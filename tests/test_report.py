"""The report on a fixture sweep built from the paper's LLaMA-3.1-8B rows, with one failed point."""

import csv
import json

from jcexp import metrics
from jcexp.report import main

DENSE = {"mmlu_pro": 35.4, "bbh": 62.3, "math": 17.7}
POINTS = {  # (sparsity, bits): scores, from Tables II, III and VII
    (25, 16): {"mmlu_pro": 33.3, "bbh": 60.2, "math": 14.9},
    (0, 4): {"mmlu_pro": 32.0, "bbh": 53.3, "math": 0.2},
    (0, 3): {"mmlu_pro": 21.3, "bbh": 43.8, "math": 4.2},
    (25, 4): {"mmlu_pro": 30.5, "bbh": 53.4, "math": 10.5},
}


def fixture_result(run_dir, sparsity, bits, scores):
    sr = metrics.semantic_retention(scores, DENSE)
    return {
        "status": "complete",
        "run_dir": str(run_dir),
        "model": {"name": "llama3_1_8b"},
        "compression": {"pruner": {"sparsity": float(sparsity), "mask": None}, "quant": {"bits": bits}},
        "metrics": {
            "tcr": metrics.tcr(sparsity, bits),
            "sr": sr,
            "sr1": None,
            "srcr": metrics.srcr(sr, sparsity, bits),
        },
        "measured": {"sparsity": {"final": sparsity / 100}},
        "tasks": {
            t: {"value": v / 100, "stderr": 0.004, "baseline": DENSE[t] / 100} for t, v in scores.items()
        },
        "perplexity": {},
    }


def test_report_tables_and_verdict(tmp_path):
    for i, ((s, b), scores) in enumerate(POINTS.items()):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "result.json").write_text(json.dumps(fixture_result(d, s, b, scores)))
    failed = tmp_path / "9"
    (failed / ".hydra").mkdir(parents=True)  # a job that died before writing its result

    main([str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    assert "4 complete run(s), 0 failed, 1 missing." in md
    assert "| 4 bit | 75% | 81.25% |" in md and "| 3 bit | 81.25% | 85.94% |" in md  # Table I cells
    assert (
        "| llama3_1_8b | 25% 4bit | 81.25% | 53.4 ± 0.4 | 10.5 ± 0.4 | 30.5 ± 0.4 | 0.818 | n/a | n/a | n/a | n/a "
        "| 0.205 | 25.00% |" in md
    )
    # The paper's headline on LLaMA: 25% + 4 bit beats 3 bit at TCr 81.25% by ~21.8 points of Sr. The paper's
    # rows carry no per-item results, so no interval: the verdict says so rather than "higher".
    assert (
        "TCr 81.25%: 25% 4bit (Sr 0.818) against 3bit (Sr 0.601): undefined (+21.8 points of Sr): "
        "no paired interval (not scored against the same dense baseline)" in md
    )
    assert "equivalence margin ±5 points of Sr" in md
    assert str(failed) in md
    figures = ("fig1_pruning_only", "fig2_quant_only", "fig5_joint_vs_quant", "fig3_srcr")
    assert "## Plots\n\n" + "\n".join(f"![{f}](plots/{f}.png)" for f in figures) + "\n" in md
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert len(rows) == 4 and {"model", "config", "tcr", "sr", "srcr"} <= set(rows[0])


def test_a_quantizer_at_16_bit_is_the_unquantized_variant():
    """A grid's quant.bits=16 point quantizes nothing: it must pair with quant=none runs (pruning-only rows of
    Tables V-VI), not with GPTQ ones."""
    from jcexp.report import run_variant

    def rec(**quant):
        return {"compression": {"pruner": {"sparsity": 25.0}, "quant": quant}}

    assert run_variant(rec(name="gptq", bits=16)) == "none"
    assert run_variant(rec(name="gptq", bits=4)) == "gptq"
    assert run_variant(rec(name="gptq", bits=4, case="B")) == "gptq"  # the paper's tool: the plain variant
    assert run_variant(rec(name="gptq", bits=4, case="A")) == "Case A"
    assert run_variant(rec(name="gptq", bits=4, case="joint")) == "joint mode"
    assert run_variant(rec(name="llm_int8", bits=8)) == "llm_int8"
    assert run_variant(rec()) == "none"


def test_the_verdict_judges_a_joint_run_against_the_same_quantizer(tmp_path):
    """A sweep with GPTQ and NF4 quantization-only runs at one TCr: joint GPTQ meets GPTQ, joint NF4 meets NF4,
    whichever order the runs come in."""
    from jcexp.report import verdict

    def run(sparsity, bits, name, scores):
        r = fixture_result(tmp_path, sparsity, bits, scores)
        r["compression"]["quant"]["name"] = name
        return r

    q_gptq = run(0, 4, "gptq", POINTS[(0, 4)])
    q_nf4 = run(0, 4, "nf4", {"mmlu_pro": 20.0, "bbh": 30.0, "math": 1.0})
    j_gptq = run(50, 8, "gptq", POINTS[(25, 4)])
    j_nf4 = run(50, 8, "nf4", POINTS[(25, 4)])
    for order in ([q_gptq, q_nf4, j_gptq, j_nf4], [q_nf4, q_gptq, j_nf4, j_gptq]):
        lines = verdict(order)
        gptq_line = next(x for x in lines if "(nf4)" not in x)
        nf4_line = next(x for x in lines if x.count("(nf4)") == 2)
        assert f"{metrics.semantic_retention(POINTS[(0, 4)], DENSE):.3f}" in gptq_line
        assert "against 4bit (nf4)" in nf4_line and "+37.6 points of Sr" in nf4_line


def test_kl_top1_and_flips_stand_beside_sr_in_the_table_the_csv_and_a_plot(tmp_path):
    """Distribution-level retention (result.json's ``retention``) in its own columns next to Sr, which keeps
    its own; a result written before it has none and reads n/a."""
    retention = {
        (0, 4): {"kld": 2.1e-05, "kld_ci": [1.87e-05, 2.43e-05], "top1_agreement": 0.912, "flip_rate": 0.05},
        (25, 4): {"kld": 0.1234, "kld_ci": [0.1101, 0.1390], "top1_agreement": 0.853, "flip_rate": 0.1},
    }
    for i, ((s, b), scores) in enumerate(POINTS.items()):
        d = tmp_path / str(i)
        d.mkdir()
        result = fixture_result(d, s, b, scores)
        if (s, b) in retention:
            flips = {"all": {"correct_to_wrong": 7, "wrong_to_correct": 3, "items": 200}, "tasks": {}}
            result["retention"] = {**retention[(s, b)], "flips": flips}
        (d / "result.json").write_text(json.dumps(result))
    main([str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    assert "| Sr [95% CI] | KL nats/token [95% CI] | top-1 agree | flips lost/gained (rate) | Sr1 |" in md
    assert "| 0.818 | 0.123 [0.110, 0.139] | 85.3% | -7 +3 (10.0%) | n/a | 0.205 |" in md
    assert "2.10e-05 [1.87e-05, 2.43e-05]" in md  # a tiny KL keeps its digits (4 decimals printed 0.0000)
    assert "| 0.601 | n/a | n/a | n/a | n/a |" in md  # 3 bit: written before retention existed
    rows = {r["config"]: r for r in csv.DictReader(open(tmp_path / "report.csv"))}
    assert float(rows["4bit"]["kld"]) == 2.1e-05 and float(rows["4bit"]["flip_rate"]) == 0.05
    assert rows["4bit"]["sr"] and rows["3bit"]["kld"] == ""
    assert (tmp_path / "plots" / "kld.png").is_file() and "![kld](plots/kld.png)" in md
