"""The offline prose corpus: calibration and evaluation never overlap; windows are exact and seeded."""

import platform

from jcexp import data
from jcexp.models import TinyRandomLlama


def test_calibration_and_eval_are_disjoint():
    """The held-out paragraphs ship frozen beside the offline tasks (data.EVAL_FILE); each hashes to 'eval', so
    no calibration paragraph of this or any Python is one of them. On the Python that wrote the file, the two
    halves are this Python's paragraphs, split."""
    ev, cal = set(data.prose_split("eval")), set(data.prose_split("calibration"))
    assert ev and cal and not ev & cal
    assert all(data.split_of(p) == "eval" for p in ev)
    frozen = data.eval_file()
    assert frozen["fingerprint"] == data.fingerprint(data.prose_split("eval"))
    if frozen["python"] == platform.python_version():
        assert ev | cal == set(data.prose_paragraphs())
        assert data.prose_split("eval") == [p for p in data.prose_paragraphs() if data.split_of(p) == "eval"]


def test_offline_tasks_are_built_from_eval_text_only():
    import importlib.util

    from jcexp.evaluate import BUILTIN_TASKS

    spec = importlib.util.spec_from_file_location("prose_tasks", BUILTIN_TASKS / "offline" / "prose_tasks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cal_text = " ".join(data.prose_split("calibration"))
    cloze = mod.lastword()["test"]
    mc = mod.nextsentence()["test"]
    assert len(cloze) > 200 and len(mc) > 150
    assert all(row["context"] not in cal_text for row in list(cloze)[:50])
    assert all(len(row["choices"]) == 4 and 0 <= row["label"] < 4 for row in mc)
    assert mc[0] == mod.nextsentence()["test"][0]  # deterministic


def test_calibration_windows_are_exact_and_seeded(shared_cache):
    _, tok = TinyRandomLlama(str(shared_cache)).load()
    a = data.LocalProseCalibration("local", 8, 64, 0, {}).dataset(tok)
    b = data.LocalProseCalibration("local", 8, 64, 0, {}).dataset(tok)
    c = data.LocalProseCalibration("local", 8, 64, 1, {}).dataset(tok)
    assert len(a) == 8 and all(len(x) == 64 for x in a["input_ids"])
    assert a["input_ids"] == b["input_ids"] != c["input_ids"]


def test_too_little_calibration_text_is_a_clear_error(shared_cache):
    import pytest

    _, tok = TinyRandomLlama(str(shared_cache)).load()
    with pytest.raises(ValueError, match="fewer than num_samples x seq_len"):
        data.LocalProseCalibration("local", 100000, 512, 0, {}).dataset(tok)


def test_empty_calibration_file_adds_nothing(tmp_path, shared_cache):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    src = data.LocalProseCalibration("local", 4, 32, 0, {"files": [str(empty)]})
    src.check()
    assert src.texts() == data.prose_split("calibration")
