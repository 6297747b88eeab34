"""The same work as one jcexp run, written directly against the libraries: llm-compressor's oneshot twice
(SparseGPT, then GPTQ) and lm-eval's simple_evaluate before and after. The reference for bench/overhead.py.

Same model directory, the same calibration windows (built with jcexp.data, which is data preparation both
sides need, not orchestration), the same modifiers' arguments as conf/pruner/sparsegpt.yaml and
conf/quant/gptq.yaml, the same tasks, limit, batch size and seeds. No result file, checks, caches or tracking.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["DISABLE_MULTIPROC"] = "1"  # as jcexp.evaluate does (lm-eval's bootstrap pool)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--sparsity", type=float, default=25.0)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--limit", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import lm_eval
    import numpy as np
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jcexp.data import LocalProseCalibration
    from jcexp.evaluate import BUILTIN_TASKS

    start = time.perf_counter()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    calibration = LocalProseCalibration("local", args.samples, args.seq_len, args.seed, {}).dataset(tokenizer)
    tasks = TaskManager(include_path=[str(BUILTIN_TASKS)])

    def evaluate() -> dict:
        res = lm_eval.simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=2048),
            tasks=["jc_lastword", "jc_nextsentence", "jc_prose_ppl"],
            limit=args.limit,
            task_manager=tasks,
            log_samples=False,
            random_seed=args.seed,
            numpy_random_seed=args.seed,
            torch_random_seed=args.seed,
            fewshot_random_seed=args.seed,
            bootstrap_iters=1000,
        )
        return res["results"]

    def compress(modifier) -> None:
        torch.manual_seed(args.seed)
        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=calibration,
            recipe=[modifier],
            num_calibration_samples=args.samples,
            max_seq_length=args.seq_len,
            output_dir=None,
            log_dir=None,
        )

    dense = evaluate()
    compress(
        SparseGPTModifier(
            sparsity=args.sparsity / 100,
            mask_structure="0:0",
            block_size=128,
            dampening_frac=0.01,
            targets=["Linear"],
            ignore=["re:.*lm_head"],
        )
    )
    compress(
        GPTQModifier(
            block_size=128,
            dampening_frac=0.01,
            ignore=["re:.*lm_head"],
            config_groups={
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {
                        "num_bits": args.bits,
                        "type": "int",
                        "symmetric": True,
                        "strategy": "group",
                        "group_size": args.group_size,
                    },
                }
            },
        )
    )
    compressed = evaluate()
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "dense": {t: r.get("acc,none") for t, r in dense.items()},
                "compressed": {t: r.get("acc,none") for t, r in compressed.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
