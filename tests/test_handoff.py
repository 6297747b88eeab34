"""What this process hands a subprocess evaluator (evaluator=vllm, hf_subprocess): a GPU with nothing of its model
on it and PyTorch's cache emptied before the child starts, and checkpoints that the child reads with the same
tokenizer files, in the same tokenizer mode, as the dense baseline. Real runs of the tiny random Llama through
evaluator=hf_subprocess (the path vLLM takes, with lm-eval's hf backend in the child); spies record the state
at each spawn and call through. vLLM itself is not run: only its spec is rendered."""

import hashlib
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

from jcexp import placement
from jcexp.models import tokenizer_files
from jcexp.run import run

from .conftest import TINY


def _spec(args, kwargs) -> dict:
    return args[1] if len(args) > 1 else kwargs["spec"]


def test_the_child_starts_with_nothing_of_the_model_on_an_accelerator_and_the_cache_emptied(
    compose, tmp_path, monkeypatch
):
    """Each model handed to the subprocess evaluator is first put on a stand-in GPU, both ways a model can be on
    one: dispatched with ``meta`` as its onload device (as llm-compressor's offloading leaves it), and resident
    there (as the error capture leaves it: a spy on Module.to keeps it "on the GPU" until it is moved to host
    RAM; a meta tensor cannot be copied back). At each spawn every parameter and buffer is in host RAM, and
    torch.cuda.empty_cache ran after the model left the device, before the child started (on a CPU-only machine
    it does nothing, so the spy sees the calls that would free the GPU)."""
    from compressed_tensors.offload import set_onload_device

    import jcexp.evaluate
    import jcexp.scoring

    events: list[tuple[str, list[str]]] = []
    handed: list[torch.nn.Module] = []
    real_handoff, real_spawn = jcexp.scoring.evaluate_model, jcexp.evaluate.run_worker

    resident: set[int] = set()  # models "resident on the GPU": until their .to() moves them to host RAM

    def devices() -> list[str]:
        if not handed:
            return []
        return ["cuda (stand-in)"] if id(handed[-1]) in resident else placement.state(handed[-1]).devices

    def handoff(plan, model, *args, **kwargs):
        set_onload_device(model, "meta")
        assert placement.state(model).devices == ["meta"]  # dispatched onto the stand-in GPU
        resident.add(id(model))
        handed.append(model)
        events.append(("handoff", devices()))
        return real_handoff(plan, model, *args, **kwargs)

    real_to = torch.nn.Module.to

    def to(module, *args, **kwargs):
        where = args[0] if args else kwargs.get("device")
        if isinstance(where, str | torch.device) and torch.device(where).type == "cpu":
            resident.discard(id(module))
        return real_to(module, *args, **kwargs)

    def spawn(*args, **kwargs):
        events.append(("spawn", devices()))
        return real_spawn(*args, **kwargs)

    monkeypatch.setattr(jcexp.scoring, "evaluate_model", handoff)
    monkeypatch.setattr(jcexp.evaluate, "run_worker", spawn)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append(("empty_cache", devices())))
    monkeypatch.setattr(torch.nn.Module, "to", to)

    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    result = run(compose(*TINY, "evaluator=hf_subprocess", "save_model=false", cache))

    assert result["status"] == "complete"
    spawns = [i for i, (what, _) in enumerate(events) if what == "spawn"]
    assert len(spawns) == 2, events  # the dense baseline, then the compressed model
    for i in spawns:
        assert events[i][1] == ["cpu"], events[: i + 1]
        handed_at = max(j for j in range(i) if events[j][0] == "handoff")
        emptied = [devs for what, devs in events[handed_at:i] if what == "empty_cache"]
        assert emptied and emptied[-1] == ["cpu"], events[handed_at : i + 1]


def _tokenizer(directory) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tokenizer_files(directory)}


def test_baseline_and_compressed_checkpoints_have_the_same_tokenizer_files_and_mode(
    compose, tmp_path, monkeypatch
):
    """The dense baseline reads its source's directory; the compressed model a checkpoint jcexp wrote. Both must
    hold byte-identical tokenizer files (transformers' re-save of the tiny model's tokenizer_config.json differs
    from the source's), and vLLM's spec for either names the same tokenizer mode."""
    import jcexp.evaluate

    cfg = compose(*TINY, "evaluator=hf_subprocess", f"paths.cache_dir={tmp_path / 'cache'}")
    # Only its spec is rendered, for the same directories the run's child reads: vLLM is not run here.
    vllm = instantiate(compose(*TINY, "evaluator=vllm", f"evaluator.python={sys.executable}").evaluator)
    seen: list[dict] = []
    real = jcexp.evaluate.run_worker

    def spawn(*args, **kwargs):
        directory = _spec(args, kwargs)["model_args"]["pretrained"]
        rendered = vllm.spec(cfg.benchmark, cfg.seed, directory)["model_args"]
        seen.append({"dir": directory, "tokenizer": _tokenizer(directory), "vllm": rendered})
        return real(*args, **kwargs)

    monkeypatch.setattr(jcexp.evaluate, "run_worker", spawn)
    result = run(cfg)

    source = instantiate(cfg.model.source)
    assert [s["dir"] for s in seen] == [str(source.checkpoint_dir().resolve()), seen[1]["dir"]]
    assert seen[1]["dir"].endswith("eval_checkpoint")  # the dense copy the compressed model is scored from
    dense, compressed = (s["tokenizer"] for s in seen)
    assert "tokenizer.json" in dense and "tokenizer_config.json" in dense
    assert compressed == dense
    assert _tokenizer(result["saved_model"]["path"]) == dense  # the packed checkpoint the run keeps, too
    modes = [s["vllm"].pop("tokenizer_mode") for s in seen]
    assert modes == ["hf", "hf"]  # pinned: vLLM's auto could pick mistral_common for one directory only
    assert [{k: v for k, v in s["vllm"].items() if k != "pretrained"} for s in seen][0] == {
        k: v for k, v in seen[1]["vllm"].items() if k != "pretrained"
    }
    assert Path(seen[0]["dir"]).samefile(source.tokenizer_dir())
