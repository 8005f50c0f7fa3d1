"""GPU benchmark (NEEDS CUDA; not part of `make bench`): the trainer's roles in process on one GPU,
a randomly initialised Qwen2-1.5B-shaped model in bf16.

    .venv/bin/python bench/gpu_bench.py                      # on a CUDA machine (e.g. one H100)
    .venv/bin/python bench/gpu_bench.py --cpu-smoke          # tiny model on CPU: checks the code path only

Measures, with the trainer's own ActorRole (DeepSpeed ZeRO-0 engine, HF generation engine), i.e. the
in-process (local) backend's code:
- HF generation tokens/s: completions sampled by the actor for --prompts x --samples sequences.
- experience-making tokens/s: generation plus the log-probability pass over the generated batch
  (what a KL-free GRPO step computes before training; one more pass per reference model).
- actor training tokens/s and MFU, packed (padding-free, spec.training.packing; flash-attention's
  variable-length kernels when flash-attn is installed, else per-sample sdpa) and unpacked (padded
  micro batches): the PPO-clip update over the batch (forward with entropy, backward, AdamW step),
  model FLOPs / seconds / peak. Random weights seldom sample EOS, so every completion would run to
  --new-tokens; --length-spread cuts each completion to a random length (uniform from that
  fraction of --new-tokens up to all of it), the padding real rollouts have.
- the whole loop in process (`rlhf_trainer.runner.run_manifest`, local backend, actor generating,
  --loop-steps RL steps): median seconds per step after the first. FLOPs per token: 6 x the non-embedding
  parameters, + 6 x vocab x hidden for tokens whose logits are computed (completion positions),
  + 6 x layers x hidden x context (causal attention scores and values, forward + backward).
  MFU divides by --peak-tflops (default 989: H100 SXM dense bf16).
Writes bench/results/gpu.json. The model and a synthetic tokenizer are built in --workdir (about
3 GB for the 1.5B shape); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result

QWEN2_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def build_model(directory: Path, shape: dict[str, Any], dtype: str) -> None:
    """Random init (fixed seed) + a word-level tokenizer covering the whole vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(shape["vocab_size"] - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )
    config = Qwen2Config(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def job_spec(model_dir: Path, prompts_path: Path, args: argparse.Namespace, use_gpu: bool):
    from rlhf_trainer.api.validation import validate_manifest

    samples = args.prompts * args.samples
    doc = {
        "apiVersion": "rlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": "gpu-bench"},
        "spec": {
            "algorithm": {"name": "grpo", "samplesPerPrompt": args.samples, "kl": {"coef": 0.0}},
            "models": {
                "actor": {
                    "model": str(model_dir),
                    "gpus": 1 if use_gpu else 0,
                    "zeroStage": 0,
                    "precision": "bf16",
                    "gradientCheckpointing": args.gradient_checkpointing,
                    "attnImplementation": "flash_attention_2" if use_gpu and _has_flash_attn() else "sdpa",
                },
                "reward": [{"function": "rlhf_trainer.demo.task:reward"}],
                "rollout": {"engine": "hf", "engines": 0},
            },
            "data": {"prompts": {"path": str(prompts_path)}},
            # One optimizer step per rollout: the update needs no separate old-log-prob pass.
            "training": {
                "rolloutBatchSize": args.prompts,
                "trainBatchSize": samples,
                "microBatchSize": args.micro_batch,
                "maxSteps": 1000,
                "actorLearningRate": 1e-6,
                "lrSchedule": "constant",
            },
            "generation": {"maxPromptLength": args.prompt_len, "maxNewTokens": args.new_tokens},
        },
    }
    job, errors = validate_manifest(doc)
    if errors:
        raise ValueError("; ".join(map(str, errors)))
    return job.spec


def flops_per_step(shape: dict[str, Any], params: int, mask, prompt_width: int) -> float:
    """Model FLOPs of one forward + backward over the batch (see the module docstring)."""
    d, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    embedding = vocab * d
    tokens = float(mask.sum())
    completion_tokens = float(mask[:, prompt_width:].sum())
    lengths = mask.sum(dim=1).float()
    context = float((lengths * (lengths + 1) / 2).sum())  # sum over tokens of their causal context
    return 6 * (params - embedding) * tokens + 6 * embedding * completion_tokens + 6 * layers * d * context


def spread_lengths(batch, spread: float):
    """Each completion cut to a random length in [spread, 1] x its width (fixed seed): the varied
    lengths of real rollouts, which random weights (that seldom sample EOS) do not produce."""
    import torch

    width = batch.response_width
    gen = torch.Generator().manual_seed(1)
    keep = torch.randint(max(1, int(spread * width)), width + 1, (batch.size,), generator=gen)
    cut = torch.arange(width).unsqueeze(0) < keep.unsqueeze(1)
    mask = batch.attention_mask.clone()
    mask[:, batch.prompt_width :] &= cut.to(mask.dtype)
    return type(batch)(batch.input_ids * mask, mask, batch.prompt_width)


def whole_loop(model_dir: Path, prompts_path: Path, args: argparse.Namespace, use_gpu: bool, tmp: Path):
    """Median seconds per RL step of `run_manifest` in process (first step dropped), and its phases."""
    from rlhf_trainer.demo.build import build_tokenizer
    from rlhf_trainer.runner import run_manifest

    # Text prompts need a tokenizer that round-trips them: the demo's character tokenizer (its
    # ids are a subset of the model's vocabulary; the word-level one above is for token ids only).
    tokenizer_dir = tmp / "char-tokenizer"
    build_tokenizer(str(tokenizer_dir))
    prompts_path = tmp / "loop-prompts.jsonl"
    prompts_path.write_text(
        json.dumps({"prompt": ("abcdefgh" * 1024)[: args.prompt_len - 1], "answer": "a"}) + "\n"
    )
    spec = job_spec(model_dir, prompts_path, args, use_gpu)
    actor = spec.models.actor.model_copy(update={"tokenizer": str(tokenizer_dir)})
    spec = spec.model_copy(update={"models": spec.models.model_copy(update={"actor": actor})})
    training = spec.training.model_copy(update={"max_steps": args.loop_steps})
    job_dir = tmp / "loop"
    from rlhf_trainer.api.validation import validate_manifest

    doc = {
        "apiVersion": "rlhf.io/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": "gpu-bench-loop"},
        "spec": spec.model_copy(update={"training": training}).model_dump(by_alias=True, exclude_none=True),
    }
    job, errors = validate_manifest(doc)
    if errors:
        raise ValueError("; ".join(map(str, errors)))
    if run_manifest(job, str(job_dir), "local", 0) != 0:
        raise RuntimeError("the whole-loop run failed")
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = rows[1:] or rows
    return {
        "steps": len(rows),
        "step_s_median": statistics.median(r["timing/step_s"] for r in steady),
        "phases_s": {k: statistics.fmean(r[k] for r in steady) for k in steady[0] if k.startswith("timing/")},
    }


def timed(fn, sync, repeats: int) -> tuple[list[float], Any]:
    out, seconds = None, []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU (no numbers to quote)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--length-spread", type=float, default=0.25, help="shortest completion kept, as a fraction"
    )
    parser.add_argument("--loop-steps", type=int, default=4, help="RL steps of the whole-loop run (0: skip)")
    args = parser.parse_args()

    import torch

    use_gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not use_gpu and not args.cpu_smoke:
        sys.exit(
            "gpu_bench.py needs CUDA (torch.cuda.is_available() is False); "
            "--cpu-smoke runs a tiny model on CPU to check the code path only"
        )
    if args.cpu_smoke:
        args.prompts, args.samples, args.prompt_len, args.new_tokens, args.micro_batch = 2, 4, 16, 16, 4
        args.loop_steps = min(args.loop_steps, 2)
    shape = QWEN2_1_5B if use_gpu else TINY

    from rlhf_trainer.engine.device import DistributedContext, prepare_environment
    from rlhf_trainer.rollout_batch import RolloutBatch

    prepare_environment(use_gpu)
    from rlhf_trainer.roles.actor import ActorRole

    sync = torch.cuda.synchronize if use_gpu else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="rlhf-gpu-bench-", dir=args.workdir) as tmp:
        model_dir, prompts_path = Path(tmp) / "model", Path(tmp) / "prompts.jsonl"
        build_model(model_dir, shape, "bfloat16" if use_gpu else "float32")
        words = [f"w{i}" for i in range(args.prompt_len)]
        prompts_path.write_text(json.dumps({"prompt": " ".join(words), "answer": "a"}) + "\n")
        spec = job_spec(model_dir, prompts_path, args, use_gpu)
        actor = ActorRole(spec, DistributedContext(use_gpu=use_gpu), generates=True)
        attention = spec.models.actor.attn_implementation
        params = sum(p.numel() for p in actor.engine.module.parameters())
        gen = torch.Generator().manual_seed(0)
        prompts = [
            torch.randint(4, shape["vocab_size"], (args.prompt_len,), generator=gen).tolist()
            for _ in range(args.prompts)
            for _ in range(args.samples)
        ]

        gen_s, output = timed(lambda: actor.generate(prompts), sync, args.repeats + 1)
        gen_completion_tokens = int(output.response_mask.sum())
        batch = spread_lengths(RolloutBatch.from_generation(output), args.length_spread)
        completion_tokens = int(batch.response_mask.sum())
        all_tokens = int(batch.attention_mask.sum())
        logp_s, _ = timed(lambda: actor.logprobs(batch), sync, args.repeats + 1)
        advantages = torch.randn(batch.size, 1).expand(-1, batch.response_width).contiguous()
        batch = batch.with_tensors(advantages=advantages * batch.response_mask)
        train_s, _ = timed(lambda: actor.train(batch), sync, args.repeats + 1)
        from rlhf_trainer.roles.forward import policy_forward

        actor.forward = policy_forward  # the same engine, padded micro batches
        unpacked_s, _ = timed(lambda: actor.train(batch), sync, args.repeats + 1)
        actor.engine = actor.generator = None  # free the GPU for the whole-loop run
        if use_gpu:
            torch.cuda.empty_cache()
        loop = whole_loop(model_dir, prompts_path, args, use_gpu, Path(tmp)) if args.loop_steps else None

    gen_t, logp_t, train_t, unpacked_t = (
        statistics.median(s[1:]) for s in (gen_s, logp_s, train_s, unpacked_s)
    )
    flops = flops_per_step(shape, params, batch.attention_mask, batch.prompt_width)
    result = {
        "device": torch.cuda.get_device_name() if use_gpu else "cpu (smoke run)",
        "model": {"shape": shape, "parameters": params, "dtype": "bfloat16" if use_gpu else "float32"},
        "batch": {
            "sequences": len(prompts),
            "prompt_len": args.prompt_len,
            "max_new_tokens": args.new_tokens,
            "completion_tokens": completion_tokens,
            "tokens": all_tokens,
            "micro_batch": args.micro_batch,
            "length_spread": args.length_spread,
            "padded_tokens": batch.size * batch.input_ids.shape[1],
            "attention": attention,
            "gradient_checkpointing": args.gradient_checkpointing,
        },
        "generation": {"seconds": gen_t, "completion_tokens_per_s": gen_completion_tokens / gen_t},
        "experience": {
            "seconds": gen_t + logp_t,
            "logprob_pass_s": logp_t,
            "tokens_per_s": all_tokens / (gen_t + logp_t),
        },
        "training": {
            "seconds": train_t,
            "tokens_per_s": all_tokens / train_t,
            "model_flops": flops,
            "tflops_per_s": flops / train_t / 1e12,
            "mfu": flops / train_t / (args.peak_tflops * 1e12),
            "peak_tflops": args.peak_tflops,
            "packing": True,
        },
        "training_unpacked": {
            "seconds": unpacked_t,
            "tokens_per_s": all_tokens / unpacked_t,
            "mfu": flops / unpacked_t / (args.peak_tflops * 1e12),
        },
        "whole_loop": loop,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if use_gpu else None,
        "repeats": args.repeats,
    }
    # A smoke run's numbers mean nothing: they stay out of bench/results/.
    path = (
        write_result("gpu", result)
        if use_gpu
        else write_result("gpu_cpu_smoke", result, Path(tempfile.gettempdir()))
    )
    print(
        f"{result['device']}: {params / 1e9:.2f}B params; generation "
        f"{result['generation']['completion_tokens_per_s']:,.0f} tok/s; experience "
        f"{result['experience']['tokens_per_s']:,.0f} tok/s; training {result['training']['tokens_per_s']:,.0f} "
        f"tok/s, MFU {result['training']['mfu']:.1%} packed ({result['training_unpacked']['mfu']:.1%} unpacked); "
        f"whole loop {loop}; wrote {path}"
    )


if __name__ == "__main__":
    main()
