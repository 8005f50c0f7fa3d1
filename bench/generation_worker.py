"""Worker: one generation engine (the trainer's own `hf` or `vllm` engine class) on one model;
times `generate` on the same prompts several times and writes the timings as JSON.

    .venv/bin/python bench/generation_worker.py --engine vllm --model DIR --prompts FILE \
        --num-prompts 32 --samples 8 --max-new-tokens 32 --repeats 5 --output OUT.json

The first call is warm-up (lazy initialisation) and is reported apart. Sampling is the trainer's:
temperature 1, top-p 1, no top-k, stopping at the model's end-of-sequence token.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["hf", "vllm"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from rlhf_trainer.api.validation import validate_manifest
    from rlhf_trainer.engine.models import eos_token_ids_at, load_tokenizer

    started = time.perf_counter()
    doc = {
        "apiVersion": "rlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": "bench-generation"},
        "spec": {
            "algorithm": {"name": "grpo", "samplesPerPrompt": args.samples, "kl": {"coef": 0.0}},
            "models": {
                "actor": {"model": args.model, "gpus": 0, "zeroStage": 0, "precision": "fp32"},
                "reward": [{"function": "rlhf_trainer.demo.task:reward"}],
                "rollout": {"engine": args.engine, "engines": 1, "enforceEager": True},
            },
            "data": {"prompts": {"path": str(args.prompts)}},
            "training": {
                "rolloutBatchSize": args.num_prompts,
                "trainBatchSize": args.samples,
                "microBatchSize": args.samples,
                "maxSteps": 1,
            },
            "generation": {"maxPromptLength": 32, "maxNewTokens": args.max_new_tokens, "temperature": 1.0},
        },
    }
    job, errors = validate_manifest(doc)
    assert job is not None, errors
    tokenizer = load_tokenizer(args.model)
    eos = eos_token_ids_at(tokenizer, args.model)
    texts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines()[: args.num_prompts]]
    prompts = [ids for ids in tokenizer(texts)["input_ids"] for _ in range(args.samples)]

    if args.engine == "vllm":
        from rlhf_trainer.generation import VLLMGenerationEngine

        engine = VLLMGenerationEngine(
            job.spec, 0, False, eos, tokenizer.pad_token_id, colocated=False, sequences_per_call=len(prompts)
        )
    else:
        from rlhf_trainer.generation import HFGenerationEngine

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        engine = HFGenerationEngine(
            model, job.spec.generation, eos, tokenizer.pad_token_id, torch.device("cpu")
        )
    startup = time.perf_counter() - started

    seconds, tokens = [], []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        out = engine.generate(prompts)
        seconds.append(time.perf_counter() - start)
        tokens.append(int(out.response_mask.sum()))
    if args.engine == "vllm":
        engine.close()
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(args.model).parameters())
    args.output.write_text(
        json.dumps(
            {
                "engine": args.engine,
                "model": args.model,
                "parameters": params,
                "completions": len(prompts),
                "max_new_tokens": args.max_new_tokens,
                "startup_s": startup,
                "warmup_s": seconds[0],
                "seconds": seconds[1:],
                "generated_tokens": tokens[1:],
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
