"""Checkpoints: a run that crashes after its step-2 checkpoint and resumes (resume: auto) ends with
exactly the weights of an uninterrupted run; the HF export loads with from_pretrained and generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import checkpoint_dir, checkpoint_steps, hf_weights, manifest, metrics, run

pytestmark = pytest.mark.slow


def resumable(demo_assets: dict, checkpoints: Path) -> dict:
    # Cosine schedule with warmup, shuffled data, 2 optimizer steps per rollout: everything a
    # resume has to restore (weights, Adam moments, LR step, data position, sampling RNG).
    return manifest(
        demo_assets["model"],
        demo_assets["prompts"],
        "grpo",
        {
            "models": {"reward": [{"function": "tiny_rewards:crash_after"}]},
            "training": {
                "maxSteps": 4,
                "rolloutBatchSize": 4,
                "trainBatchSize": 4,
                "lrSchedule": "cosine",
                "warmupRatio": 0.25,
            },
            "checkpoint": {"path": str(checkpoints), "everySteps": 2, "keep": 3, "resume": "auto"},
        },
    )


@pytest.fixture(scope="module")
def uninterrupted(demo_assets: dict, tiny_rewards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    assert run(resumable(demo_assets, root / "ckpt"), root / "out") == 0
    return root


def test_resume_after_a_crash_reproduces_the_uninterrupted_weights(
    demo_assets: dict, tiny_rewards: str, uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiny_rewards as rewards_module

    doc = resumable(demo_assets, tmp_path / "ckpt")
    rewards_module.CALLS["n"] = 0
    monkeypatch.setenv("TINY_REWARD_CRASH_AT", "3")  # the reward of step 3 raises
    assert run(doc, tmp_path / "out") == 1
    assert checkpoint_steps(tmp_path / "ckpt") == [2]

    monkeypatch.delenv("TINY_REWARD_CRASH_AT")
    assert run(doc, tmp_path / "out") == 0  # resume: auto picks step 2

    expected = hf_weights(checkpoint_dir(uninterrupted / "ckpt", 4) / "hf")
    resumed = hf_weights(checkpoint_dir(tmp_path / "ckpt", 4) / "hf")
    assert expected.keys() == resumed.keys()
    differing = [name for name in expected if not torch.equal(expected[name], resumed[name])]
    assert not differing, f"resumed weights differ: {differing}"

    full, interrupted = metrics(uninterrupted / "out"), metrics(tmp_path / "out")
    assert [r["step"] for r in interrupted] == [1, 2, 3, 4]
    assert [r["reward/mean"] for r in interrupted] == [r["reward/mean"] for r in full]
    assert [r["actor/lr"] for r in interrupted] == [r["actor/lr"] for r in full]
    # keep: 3 -> steps 2 and 4 are both kept
    assert checkpoint_steps(tmp_path / "ckpt") == [2, 4]


def test_hf_export_loads_with_from_pretrained_and_generates(uninterrupted: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = checkpoint_dir(uninterrupted / "ckpt", 4) / "hf"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(["say a", "repeat b"], return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] > inputs["input_ids"].shape[1]
    assert all(isinstance(text, str) for text in tokenizer.batch_decode(out, skip_special_tokens=True))
