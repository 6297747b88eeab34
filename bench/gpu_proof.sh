#!/usr/bin/env bash
# The first GPU proof, offline, on a lent GPU machine (one H100: a few minutes):
#
#     bash bench/gpu_proof.sh OUTDIR [--dry-run]
#
# Installs the wheelhouse built here by `make gpu-kit` (gpu-kit/wheels: carry `gpu-kit` with the working tree)
# with no index into a folder on PYTHONPATH, over the machine's own packages (torch, numpy, transformers: assumed
# there, never in the kit), then runs bench/gpu_proof.py's checks, one line each (PASS|FAIL|SKIP name: detail),
# writing their records under OUTDIR. Exits non-zero on any FAIL. --dry-run (any machine, no GPU): lists the
# checks and skips each GPU check by name, with this checkout's Python (.venv's where it exists).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="" DRY=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -*) echo "usage: bash bench/gpu_proof.sh OUTDIR [--dry-run]" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done
if [ -n "$DRY" ]; then
    PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
    echo "SKIP kit-install: --dry-run: the kit is not installed"
    exec "$PY" -m bench.gpu_proof proof ${OUT:+"$OUT"} --dry-run
fi
[ -n "$OUT" ] || { echo "usage: bash bench/gpu_proof.sh OUTDIR [--dry-run]" >&2; exit 2; }
mkdir -p "$OUT"
PY="${PYTHON:-python3}"  # the lent image's python3 (a venv of its own) holds torch
# Into a folder on PYTHONPATH, as the device notes advise, not a venv: a venv made from a venv's python with
# --system-site-packages sees the base interpreter's packages, not that venv's torch. The evaluator's child
# (sys.executable) inherits PYTHONPATH.
SITE="${JCEXP_PROOF_SITE:-/tmp/jcexp-proof-site}"
start=$(date +%s)
if ! ls gpu-kit/wheels/*.whl >/dev/null 2>&1; then
    echo "FAIL kit-install: no gpu-kit/wheels here: run \`make gpu-kit\` on a machine with PyPI and carry gpu-kit"
    exit 1
fi
if "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$SITE" gpu-kit/wheels/*.whl \
    >"$OUT/kit-install.log" 2>&1; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "PASS kit-install: $(ls gpu-kit/wheels/*.whl | wc -l) wheels into $SITE over $("$PY" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")') ($(( $(date +%s) - start )) s)"
else
    echo "FAIL kit-install: $(tail -3 "$OUT/kit-install.log" | tr '\n' ' ')"
    exit 1
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# The checks' own limit: 8 minutes on one H100 (the kit's install is timed above).
timeout "${JCEXP_PROOF_TIMEOUT:-480}" "$PY" -m bench.gpu_proof proof "$OUT"
rc=$?
[ $rc = 124 ] && echo "FAIL time: the checks ran past ${JCEXP_PROOF_TIMEOUT:-480} s"
echo "gpu-proof: $(( $(date +%s) - start )) s in all, records in $OUT"
exit $rc
