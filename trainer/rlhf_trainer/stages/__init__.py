"""The offline stages of the alignment pipeline: sft, rm, dpo (ipo, conservative), kto.

Each runs on the DeepSpeed engine the RL roles use (`engine/`), with the same checkpoints (exact
resume), telemetry (metrics.jsonl, Prometheus, status, the PNG plot), a held-out evaluation and an
HF export (`rm` as a one-label AutoModelForSequenceClassification that the `reward` role loads).
`runner.run_stage` is what `rlhf run` / `rlhf train` call for an offline algorithm;
`pipeline.run_pipeline` runs an RLHFPipeline's stages one after another on this machine.
"""
