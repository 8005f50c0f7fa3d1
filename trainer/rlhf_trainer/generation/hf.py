"""The `hf` generation engine: the policy's transformers model sampled by `decode.sample` (a
prompt prefilled once for its samples, finished samples dropped from the batch) on the engine's
own copy of the policy, or on the actor's module itself when generation runs inside the actor.
ZeRO-3 ranks generating on one partitioned model use `generate`'s `synced_gpus` loop instead."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from ..api.spec import GenerationSpec
from .base import GenerationOutput, completion_mask, left_pad
from .decode import sample


def sampling_config(spec: GenerationSpec, eos_ids: list[int], pad_id: int) -> GenerationConfig:
    """Every sampling knob set explicitly: a model's own generation_config.json (repetition
    penalties, top-k) would otherwise fill the unset ones and change the distribution trained on."""
    return GenerationConfig(
        do_sample=True,
        num_beams=1,
        max_new_tokens=spec.max_new_tokens,
        min_new_tokens=0,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        min_p=0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
        return_dict_in_generate=False,
    )


class HFGenerationEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        spec: GenerationSpec,
        eos_ids: list[int],
        pad_id: int,
        device: torch.device,
        max_batch_size: int | None = None,
        synced: bool = False,
    ) -> None:
        self.model = model
        self.spec = spec
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.device = device
        self.max_batch_size = max_batch_size
        # ZeRO-3 ranks generating with one partitioned model: every rank runs forward passes until
        # the last rank's samples end (each pass gathers partitions, a collective).
        self.synced = synced
        self.config = sampling_config(spec, eos_ids, pad_id)
        self.record_logprobs = False
        """Also return each token's sampling log-probability (for the correction of stale samples)."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> GenerationOutput:
        if not prompts:  # more workers than prompts (a small evaluation set)
            if self.synced:  # the other ranks' forward passes need this one's
                self.generate([[self.pad_id]])
            empty = torch.zeros((0, 1), dtype=torch.long)
            return GenerationOutput(input_ids=empty, attention_mask=empty.clone(), prompt_width=1)
        ids, mask = left_pad(prompts, self.pad_id, self.spec.max_prompt_length)
        chunk = self.max_batch_size or len(prompts)
        was_training = self.model.training
        self.model.eval()
        pieces, sampled = [], []
        try:
            for i in range(0, len(prompts), chunk):
                if not self.synced:
                    _, _, out = sample(
                        self.model,
                        prompts[i : i + chunk],
                        self.spec,
                        self.eos_ids,
                        self.pad_id,
                        self.device,
                        self.record_logprobs,
                    )
                    pieces.append(out.tokens)
                    if out.logprobs is not None:
                        sampled.append(out.logprobs)
                    continue
                recorder = SampledLogprobs(self.spec.temperature) if self.record_logprobs else None
                out = self.model.generate(
                    input_ids=ids[i : i + chunk].to(self.device),
                    attention_mask=mask[i : i + chunk].to(self.device),
                    generation_config=self.config,
                    synced_gpus=self.synced,
                    logits_processor=LogitsProcessorList([recorder] if recorder else []),
                )
                pieces.append(out[:, ids.shape[1] :].cpu())
                if recorder is not None:
                    sampled.append(recorder.finish(out))
        finally:
            self.model.train(was_training)
        width = max(p.shape[1] for p in pieces)
        responses = torch.cat(
            [torch.nn.functional.pad(p, (0, width - p.shape[1]), value=self.pad_id) for p in pieces]
        )
        response_mask = completion_mask(responses, self.eos_ids)
        responses = responses.masked_fill(response_mask == 0, self.pad_id)
        logprobs = None
        if sampled:
            logprobs = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in sampled])
            logprobs = logprobs.masked_fill(response_mask == 0, 0.0)
        return GenerationOutput(
            input_ids=torch.cat([ids, responses], dim=1),
            attention_mask=torch.cat([mask, response_mask], dim=1),
            prompt_width=ids.shape[1],
            logprobs=logprobs,
        )

    @torch.no_grad()
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)


class SampledLogprobs(LogitsProcessor):
    """Records each sampled token's log-probability under the policy's tempered distribution
    (log_softmax(logits / temperature)), as the trainer computes it: custom processors see the
    raw scores, before generate's temperature and top-k/top-p warpers."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.previous: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids)
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _take(self, sequences: torch.Tensor) -> None:
        if self.previous is not None:
            self.values.append(self.previous.gather(1, sequences[:, -1:]).squeeze(1))
            self.previous = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[b, new tokens] on CPU, given generate's output (its last column is the last sampled token)."""
        self._take(sequences)
        return torch.stack(self.values, dim=1).cpu() if self.values else torch.zeros(sequences.shape[0], 0)
