"""The CPU demo: a tiny randomly initialised model, a character tokenizer and a toy verifiable task,
built locally by `python -m rlhf_trainer.demo` for `rlhf run examples/tiny-grpo-cpu.yaml`."""
