"""The paper's equations checked against values computed by hand from its own tables."""

import math
import subprocess
import sys

import pytest

from jcexp import metrics as m

# Table I: TCr (%) for sparsity (columns) x bits (rows); 16 bit = no quantization.
TABLE_I = {
    16: {0: 0, 25: 25, 100 / 3: 33.333, 50: 50},
    8: {0: 50, 25: 62.5, 100 / 3: 66.667, 50: 75},
    4: {0: 75, 25: 81.25, 100 / 3: 83.333, 50: 87.5},
    3: {0: 81.25, 25: 85.9375, 100 / 3: 87.5, 50: 90.625},
    2: {0: 87.5, 25: 90.625, 100 / 3: 91.667, 50: 93.75},
}


@pytest.mark.parametrize("bits", sorted(TABLE_I))
def test_tcr_matches_table_i(bits):
    for sparsity, expected in TABLE_I[bits].items():
        assert 100 * m.tcr(sparsity, bits) == pytest.approx(expected, abs=5e-4)


def test_tcr_cases_of_eq_1():
    assert m.tcr(25, 16) == pytest.approx(0.25)  # pruning-only: s/100
    assert m.tcr(0, 4) == pytest.approx(1 - 4 / 16)  # quantization-only
    assert m.tcr(0, 16) == 0.0  # dense


@pytest.mark.parametrize("s,b", [(-1, 4), (100, 4), (25, 0), (25, 17)])
def test_tcr_rejects_out_of_range(s, b):
    with pytest.raises(ValueError):
        m.tcr(s, b)


# LLaMA-3.1-8B rows (MMLU-Pro, BBH, MATH) of Tables II, III and VII.
LLAMA_DENSE = {"mmlu_pro": 35.4, "bbh": 62.3, "math": 17.7}
LLAMA_P25 = {"mmlu_pro": 33.3, "bbh": 60.2, "math": 14.9}  # Table II, 25%
LLAMA_W4 = {"mmlu_pro": 32.0, "bbh": 53.3, "math": 0.2}  # Table III, 4 bit
LLAMA_W3 = {"mmlu_pro": 21.3, "bbh": 43.8, "math": 4.2}  # Table III, 3 bit
LLAMA_P25_W4 = {"mmlu_pro": 30.5, "bbh": 53.4, "math": 10.5}  # Table VII
MISTRAL_DENSE = {"mmlu_pro": 30.3, "bbh": 58.0, "math": 12.8}
MISTRAL_P25_W4 = {"mmlu_pro": 26.9, "bbh": 53.5, "math": 10.1}
MISTRAL_W3 = {"mmlu_pro": 23.3, "bbh": 43.0, "math": 6.4}


def test_sr2_is_ratio_of_sums_table_ii():
    # (33.3 + 60.2 + 14.9) / (35.4 + 62.3 + 17.7) = 108.4 / 115.4
    assert m.semantic_retention(LLAMA_P25, LLAMA_DENSE) == pytest.approx(108.4 / 115.4)
    # The table's own mean column gives the same ratio: 36.2 / 38.5, up to its rounding.
    assert m.semantic_retention(LLAMA_P25, LLAMA_DENSE) == pytest.approx(36.2 / 38.5, abs=2e-3)


def test_sr1_is_mean_of_ratios():
    expected = (33.3 / 35.4 + 60.2 / 62.3 + 14.9 / 17.7) / 3
    assert m.semantic_retention(LLAMA_P25, LLAMA_DENSE, kind="sr1") == pytest.approx(expected)


def test_sr_kinds_differ_when_a_task_collapses():
    # Table III 4-bit MATH falls to 0.2: Sr1 punishes it far more than Sr2.
    sr1 = m.semantic_retention(LLAMA_W4, LLAMA_DENSE, kind="sr1")
    sr2 = m.semantic_retention(LLAMA_W4, LLAMA_DENSE)
    assert sr2 == pytest.approx(85.5 / 115.4)
    assert sr1 < sr2 - 0.1


def test_srcr_three_cases():
    sr_p = m.semantic_retention(LLAMA_P25, LLAMA_DENSE)
    assert m.srcr(sr_p, 25, 16) == pytest.approx(0.5 * 108.4 / 115.4)  # eq. 13: sqrt(0.25) = 0.5
    sr_q = m.semantic_retention(LLAMA_W4, LLAMA_DENSE)
    assert m.srcr(sr_q, 0, 4) == pytest.approx(0.5 * 85.5 / 115.4)  # eq. 14: -log2(4/16)/4 = 0.5
    sr_j = m.semantic_retention(LLAMA_P25_W4, LLAMA_DENSE)
    assert sr_j == pytest.approx(94.4 / 115.4)
    assert m.srcr(sr_j, 25, 4) == pytest.approx(0.25 * 94.4 / 115.4)  # eq. 15
    assert m.srcr(1.0, 0, 16) == 0.0  # dense: no compression, SrCr 0


def test_srcr_quant_factor_values():
    assert m.quantization_factor(8) == pytest.approx(0.25)
    assert m.quantization_factor(3) == pytest.approx(-math.log2(3 / 16) / 4)
    assert m.quantization_factor(1) == pytest.approx(1.0)  # the normalizing maximum
    assert m.pruning_factor(100 / 3) == pytest.approx(math.sqrt(1 / 3))


def test_srcr_estimate_is_product_of_single_method_srcrs():
    sr_p = m.semantic_retention(LLAMA_P25, LLAMA_DENSE)
    sr_q = m.semantic_retention(LLAMA_W4, LLAMA_DENSE)
    est = m.srcr_estimate(sr_p, sr_q, 25, 4)
    assert est == pytest.approx((0.5 * 108.4 / 115.4) * (0.5 * 85.5 / 115.4))
    # Section IV-B.3: LLaMA's measured SrCr_j exceeds its estimate (the 4-bit MATH collapse skews it).
    assert m.srcr(m.semantic_retention(LLAMA_P25_W4, LLAMA_DENSE), 25, 4) > est


def test_joint_beats_3bit_by_about_20_points_at_tcr_81_25():
    # The paper's headline: 25% + 4 bit vs 3 bit, both at TCr 81.25%, averaged over the two models.
    assert m.tcr(25, 4) == m.tcr(0, 3) == pytest.approx(0.8125)
    gain_llama = m.semantic_retention(LLAMA_P25_W4, LLAMA_DENSE) - m.semantic_retention(LLAMA_W3, LLAMA_DENSE)
    gain_mistral = m.semantic_retention(MISTRAL_P25_W4, MISTRAL_DENSE) - m.semantic_retention(
        MISTRAL_W3, MISTRAL_DENSE
    )
    assert (gain_llama + gain_mistral) / 2 == pytest.approx(0.20, abs=0.01)


def test_retention_and_errors():
    assert m.retention(30.0, 40.0) == pytest.approx(0.75)
    assert m.perplexity_retention(40.0, 20.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        m.retention(1.0, 0.0)
    with pytest.raises(ValueError):
        m.semantic_retention({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError):
        m.semantic_retention({"a": 1.0}, {"a": 1.0}, kind="sr3")


def test_mask_overhead_bits():
    assert m.mask_overhead_bits() == 1.0
    assert m.mask_overhead_bits(2, 8) == pytest.approx(math.log2(28) / 8)
    assert m.mask_overhead_bits(1, 4) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        m.mask_overhead_bits(4, 4)


def test_metrics_import_needs_only_the_standard_library():
    code = (
        "import sys; import jcexp.metrics; "
        "bad = {'torch', 'numpy', 'wandb', 'omegaconf', 'transformers'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
