"""Build the demo's tiny model, character tokenizer and prompts locally (nothing is downloaded)."""

from __future__ import annotations

import json
import os

from .task import make_prompts

SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789 :,.?!'-=+<>|/\n"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SEED = 1234
VERSION = "4"  # bump when what is built changes, so an old cache is rebuilt


def build_tokenizer(directory: str):
    """A character-level PreTrainedTokenizerFast with pad/bos/eos/unk and a small chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL.values())}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # newlines too
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos']} $A", special_tokens=[(SPECIAL["bos"], vocab[SPECIAL["bos"]])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL["pad"],
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        unk_token=SPECIAL["unk"],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_model(
    directory: str,
    tokenizer,
    *,
    hidden: int = 64,
    intermediate: int = 256,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    seed: int = SEED,
) -> None:
    """A randomly initialised Qwen2 with a fixed seed; by default the demo's (2 layers, hidden 64, 2
    heads of 32). Head size 32 is the smallest vLLM's CPU attention supports, so the same model
    runs with engine: vllm. The benchmarks build larger shapes with it."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_demo(root: str = ".cache/demo", force: bool = False, prompts: int = 512) -> dict[str, str]:
    """Build what examples/tiny-grpo-cpu.yaml needs under `root`, unless it is already there."""
    model_dir = os.path.join(root, "tiny-qwen2")
    prompts_path = os.path.join(root, "prompts.jsonl")
    marker = os.path.join(root, "VERSION")
    paths = {"model": model_dir, "prompts": prompts_path}
    if not force and os.path.exists(marker) and open(marker).read().strip() == VERSION:
        return paths
    os.makedirs(model_dir, exist_ok=True)
    tokenizer = build_tokenizer(model_dir)
    build_model(model_dir, tokenizer)
    with open(prompts_path, "w") as f:
        for row in make_prompts(prompts, SEED):
            f.write(json.dumps(row) + "\n")
    with open(marker, "w") as f:
        f.write(VERSION + "\n")
    return paths
