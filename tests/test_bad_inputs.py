"""Each bad input of the catalog (tests/bad_inputs.py) fails with its message before any compute, and
docs/reliability.md lists every case."""

import re
import subprocess

import pytest

from .bad_inputs import BEGIN, CASES, DOC, END, can_mount, full_text, trigger


def _skip_reason(case) -> str | None:
    if "mount" in case.needs and not can_mount():
        return "needs root and mount(8) for a small tmpfs; not available here"
    if "no-gpu" in case.needs:
        import torch

        if torch.cuda.is_available():
            return "a GPU is visible here"
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_before_compute_with_its_message(case, tmp_path, monkeypatch):
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    from jcexp import run as run_module
    from jcexp import scoring

    def no_compute(*_a, **_k):  # any stage reached means the check came too late
        raise AssertionError(f"{case.id}: reached a compression or evaluation stage")

    monkeypatch.setattr(scoring, "dense_baseline", no_compute)
    monkeypatch.setattr(run_module, "run_stage", no_compute)
    try:
        exc = trigger(case, tmp_path)
    finally:
        if (tmp_path / "small_disk").is_dir():
            subprocess.run(["umount", str(tmp_path / "small_disk")], check=False)
    assert not isinstance(exc, AssertionError), exc

    assert re.search(case.match, full_text(exc), re.S), f"{type(exc).__name__}: {full_text(exc)}"
    assert not list((tmp_path / "outputs").rglob("result.json"))


def test_reliability_doc_lists_every_case():
    text = DOC.read_text()
    table = text[text.index(BEGIN) : text.index(END)]
    missing = [c.id for c in CASES if f"`{c.id}`" not in table]
    assert not missing, f"run `python -m tests.bad_inputs` to refresh {DOC.name}; missing {missing}"
