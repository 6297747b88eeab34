"""Hub snapshots fetch only what a model needs (config, generation config, tokenizer, safetensors weights), and
the disk preflight counts exactly those files. No hub can be reached here: the hub is what is mocked, by the
file listings of the paper's two repositories (names as the hub lists them, sizes approximately) handed to
jcexp.models.hub_listing, and a stand-in snapshot_download that applies the patterns it is given to that
listing the way huggingface_hub's does (huggingface_hub.utils.filter_repo_objects)."""

import re

import pytest
from huggingface_hub.utils import filter_repo_objects

from jcexp import memory, models, preflight
from jcexp.config import ConfigError
from jcexp.memory import MiB

from .conftest import TINY

GB = 10**9
LLAMA_3_1_8B = {
    ".gitattributes": 1_519,
    "LICENSE": 7_627,
    "README.md": 36_000,
    "USE_POLICY.md": 4_691,
    "config.json": 826,
    "generation_config.json": 185,
    "model-00001-of-00004.safetensors": 4_976_698_672,
    "model-00002-of-00004.safetensors": 4_999_802_720,
    "model-00003-of-00004.safetensors": 4_915_916_176,
    "model-00004-of-00004.safetensors": 1_168_138_808,
    "model.safetensors.index.json": 23_950,
    "original/consolidated.00.pth": 16_060_617_592,
    "original/params.json": 199,
    "original/tokenizer.model": 2_183_982,
    "special_tokens_map.json": 73,
    "tokenizer.json": 9_085_657,
    "tokenizer_config.json": 50_500,
}
MISTRAL_7B_V0_3 = {
    ".gitattributes": 1_519,
    "README.md": 6_000,
    "config.json": 601,
    "consolidated.safetensors": 14_496_078_512,
    "generation_config.json": 116,
    "model-00001-of-00003.safetensors": 4_949_453_792,
    "model-00002-of-00003.safetensors": 4_999_819_336,
    "model-00003-of-00003.safetensors": 4_546_807_800,
    "model.safetensors.index.json": 23_950,
    "params.json": 202,
    "special_tokens_map.json": 414,
    "tokenizer.json": 1_961_548,
    "tokenizer.model": 587_404,
    "tokenizer.model.v3": 587_404,
    "tokenizer_config.json": 137_000,
}
NEEDED_BY_BOTH = {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json"}


def test_the_patterns_keep_config_tokenizer_and_safetensors_weights_only():
    llama = models.hub_files(LLAMA_3_1_8B)
    assert set(llama) == NEEDED_BY_BOTH | {
        *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)),
        "special_tokens_map.json",
        "tokenizer_config.json",
    }
    assert 16.0 * GB < sum(llama.values()) < 16.1 * GB  # not the 32 GB of the whole repository
    mistral = models.hub_files(MISTRAL_7B_V0_3)
    assert not {"consolidated.safetensors", "params.json"} & set(mistral)  # Mistral's own format, 14.5 GB
    assert NEEDED_BY_BOTH | {"tokenizer.model", "model-00003-of-00003.safetensors"} <= set(mistral)
    assert 14.4 * GB < sum(mistral.values()) < 14.6 * GB
    # Pickled weights only where a repository has no safetensors ones.
    old = {"config.json": 1, "pytorch_model.bin": 10, "tokenizer.json": 2, "flax_model.msgpack": 10}
    assert set(models.hub_files(old)) == {"config.json", "pytorch_model.bin", "tokenizer.json"}
    assert "*.bin" in models.hub_patterns(LLAMA_3_1_8B)[1]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The mocked hub: jcexp.models.hub_listing answers from a listing, snapshot_download fetches (records)
    what its patterns select from it, and the local hub cache holds ``cached``."""
    state = {"listing": LLAMA_3_1_8B, "fetched": [], "cached": set()}

    def listing(repo_id, revision):
        return dict(state["listing"])

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, ignore_patterns=None, **_):
        chosen = filter_repo_objects(
            state["listing"], allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
        )
        state["fetched"].append(sorted(chosen))
        return str(tmp_path / "snapshot")

    def try_to_load_from_cache(repo_id, filename, revision=None, **_):
        return f"/cache/{filename}" if filename in state["cached"] else None

    import huggingface_hub

    monkeypatch.setattr(models, "hub_listing", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", try_to_load_from_cache)
    return state


@pytest.mark.parametrize("listing", [LLAMA_3_1_8B, MISTRAL_7B_V0_3])
def test_the_snapshot_fetches_exactly_those_files(hub, listing):
    hub["listing"] = listing
    source = models.HubModel("org/model")
    assert source.checkpoint_dir().name == "snapshot"
    assert hub["fetched"] == [sorted(models.hub_files(listing))]
    source.tokenizer_dir()  # the checkpoints' tokenizer files: no weights fetched for them
    assert not [f for f in hub["fetched"][1] if f.endswith(".safetensors")]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(hub["fetched"][1])


def test_the_disk_preflight_counts_the_snapshot_less_what_is_cached(hub, compose, monkeypatch, tmp_path):
    """A plan of the paper's Llama-3.1-8B (its config given here, as the hub would): the disk estimate has the
    snapshot's files that the hub cache lacks, on the hub cache's disk, and a node short of it is refused."""
    from jcexp.plan import Plan

    from .test_preflight import llama_8b_config

    config = llama_8b_config()
    monkeypatch.setattr(models.HubModel, "hf_config", lambda self: config)
    monkeypatch.setattr(memory, "_tokenizer", lambda _s: (_ for _ in ()).throw(OSError("no hub")))
    hub["cached"] = {"config.json", "model-00001-of-00004.safetensors"}
    plan = Plan(compose("model=llama3_1_8b", "benchmark=tiny", "save_model=false", "pruner=none"))
    est = memory.estimate_for(plan)

    needed = models.hub_files(LLAMA_3_1_8B)
    missing = sum(n for f, n in needed.items() if f not in hub["cached"])
    assert est["inputs"]["workload"]["hub_download_bytes"] == missing
    assert est["disk"]["hub_download"] == round(missing / MiB, 1)
    assert est["hub_snapshot"]["files"] == needed
    assert "original/consolidated.00.pth" in est["hub_snapshot"]["skipped"]

    hub_cache = tmp_path / "hub"
    hub_cache.mkdir()
    monkeypatch.setattr(preflight, "_hub_cache", lambda: hub_cache)
    usage = preflight.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _p: usage._replace(free=missing // 2))
    with pytest.raises(
        ConfigError, match=rf"hub snapshot .* under {re.escape(str(hub_cache))}.*HF_HUB_CACHE"
    ):
        preflight.check(est, plan.cfg, out=tmp_path)


def test_other_sources_download_nothing(compose):
    from jcexp.plan import Plan

    est = memory.estimate_for(Plan(compose(*TINY)))
    assert est["disk"].get("hub_download", 0) == 0 and "hub_snapshot" not in est
