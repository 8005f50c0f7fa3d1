"""The GRPO workload the trainer and TRL both run: the `make demo` manifest with benchmark overrides.

One manifest is the single description of the work; `trl_grpo.py` translates it into TRL's
GRPOConfig field by field (see `trl_config_kwargs`), so the two runs cannot drift apart silently.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from common import REPO

DEMO_MANIFEST = REPO / "examples" / "tiny-grpo-cpu.yaml"


def load_manifest(path: Path = DEMO_MANIFEST) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one RLHFJob document, found {len(docs)}")
    return docs[0]


def bench_manifest(
    base: dict[str, Any],
    *,
    steps: int,
    seed: int | None = None,
    algorithm: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The manifest with the run length (and optionally seed/algorithm) replaced and checkpoints off:
    TRL runs with save_strategy "no", so ours saves nothing either."""
    doc = copy.deepcopy(base)
    spec = doc["spec"]
    spec["training"]["maxSteps"] = steps
    if seed is not None:
        spec["training"]["seed"] = seed
    if algorithm is not None:
        spec["algorithm"]["name"] = algorithm
        if algorithm == "grpovi":
            # The demo task's reward is verifiable: it lies in [0, 1].
            spec["algorithm"]["rewardRange"] = {"mode": "fixed", "low": 0.0, "high": 1.0}
    spec.pop("checkpoint", None)
    if name is not None:
        doc["metadata"]["name"] = name
    return doc


def validated(doc: dict[str, Any]):
    """The RLHFJob of `doc`, or ValueError naming every bad field."""
    from rlhf_trainer.api.validation import validate_manifest

    job, errors = validate_manifest(doc)
    if errors or job is None:
        raise ValueError("bench manifest invalid: " + "; ".join(str(e) for e in errors))
    return job


def absolute(path: str) -> str:
    """Manifest paths are relative to the repository root (where `make demo` runs)."""
    return str(Path(path) if Path(path).is_absolute() else REPO / path)


def samples_per_step(job) -> int:
    spec = job.spec
    return spec.training.rollout_batch_size * spec.algorithm.samples_per_prompt


def optimizer_steps_per_rl_step(job) -> int:
    spec = job.spec
    samples = samples_per_step(job)
    if samples % spec.training.train_batch_size:
        raise ValueError("rolloutBatchSize x samplesPerPrompt must be a multiple of trainBatchSize")
    return samples // spec.training.train_batch_size * spec.algorithm.epochs


def _schedule(train, optimizer_steps: int) -> dict[str, Any]:
    warmup = round(train.warmup_ratio * optimizer_steps)
    if train.lr_schedule == "constant":
        return {"lr_scheduler_type": "constant_with_warmup" if warmup else "constant", "warmup_steps": warmup}
    return {
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": train.min_lr_ratio},
        "warmup_steps": warmup,
    }


def trl_config_kwargs(job, steps: int) -> dict[str, Any]:
    """GRPOConfig keyword arguments (TRL 1.x) that do the same work as `job`, step for step.

    TRL counts `max_steps` in optimizer steps and `steps_per_generation` in micro batches; one of
    our RL steps (a rollout of rolloutBatchSize x samplesPerPrompt samples, then
    samples / trainBatchSize optimizer steps of trainBatchSize samples each, micro batches of
    microBatchSize) is therefore:
      per_device_train_batch_size = microBatchSize
      gradient_accumulation_steps = trainBatchSize / microBatchSize
      generation_batch_size       = rolloutBatchSize x samplesPerPrompt
      max_steps                   = steps x optimizer steps per RL step
    """
    spec = job.spec
    algo, train, gen = spec.algorithm, spec.training, spec.generation
    if algo.name != "grpo":
        raise ValueError(f"TRL comparison runs grpo only, the manifest says {algo.name}")
    if train.train_batch_size % train.micro_batch_size:
        raise ValueError("trainBatchSize must be a multiple of microBatchSize")
    if algo.epochs != 1:
        raise ValueError("the TRL mapping covers epochs: 1 (TRL's num_iterations re-generates per iteration)")
    actor = spec.models.actor
    if actor.precision != "fp32":
        raise ValueError("the CPU comparison runs fp32; the manifest's actor precision is " + actor.precision)
    aggregation = algo.loss_aggregation or "token-mean"
    loss_type = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}
    from rlhf_trainer.engine.deepspeed_engine import ADAM_BETAS

    return {
        "per_device_train_batch_size": train.micro_batch_size,
        "gradient_accumulation_steps": train.train_batch_size // train.micro_batch_size,
        "generation_batch_size": samples_per_step(job),
        "num_generations": algo.samples_per_prompt,
        "num_iterations": algo.epochs,
        "max_steps": steps * optimizer_steps_per_rl_step(job),
        "max_completion_length": gen.max_new_tokens,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "top_k": gen.top_k,
        "learning_rate": train.actor_learning_rate,
        **_schedule(train, steps * optimizer_steps_per_rl_step(job)),
        "weight_decay": train.weight_decay,
        "adam_beta1": ADAM_BETAS[0],
        "adam_beta2": ADAM_BETAS[1],
        "max_grad_norm": train.max_grad_norm,
        "seed": train.seed,
        "beta": algo.kl.coef,
        "epsilon": algo.clip.low,
        "epsilon_high": algo.clip.high,
        "loss_type": loss_type[aggregation],
        "scale_rewards": "group",
        "gradient_checkpointing": actor.gradient_checkpointing,
        "bf16": False,
        "fp16": False,
        "use_cpu": True,
        "use_vllm": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "log_completions": False,
        "shuffle_dataset": spec.data.shuffle,
        "mask_truncated_completions": False,
    }
