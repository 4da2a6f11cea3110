"""The serving engine's scheduler limits (`Scheduler`), as engines expose them.

A continuous-batching engine runs one step at a time. Each step decodes one token for
every running request whose prompt is done and spends the rest of a token budget on
prompt chunks, first come first served:

| field | vLLM | TensorRT-LLM | SGLang |
|---|---|---|---|
| `max_batch` | `--max-num-seqs` | `max_batch_size` | `--max-running-requests` |
| `max_tokens_per_step` | `--max-num-batched-tokens` | `max_num_tokens` | - |
| `chunked_prefill_budget` | (the budget) | (the budget) | `--chunked-prefill-size` |
| `mixed=True` | chunked prefill (V1) | in-flight batching | `--enable-mixed-chunk` |

`max_batch` counts requests in a slot (prefilling or decoding); the KV-cache capacity
of the replica caps it further: it holds `serving.kv_capacity` sequences of S_in +
`reserved_output`·S_out tokens each. A paged engine admits by the tokens a request
holds, not by the model's context: TensorRT-LLM's default capacity scheduler
(`GUARANTEED_NO_EVICT`) reserves the prompt and every output token at admission
(`reserved_output` = 1, the default); vLLM (V1) and SGLang allocate KV blocks as
tokens are produced and preempt (vLLM) or retract (SGLang) requests when the cache
runs out, so the requests they keep running hold S_in + S_out/2 tokens on average over
their lives (`reserved_output` = 0.5; the cost of preemption itself is not modelled).
A step holds at most `max_tokens_per_step` tokens: its decodes (one each) plus prompt
tokens, of which at most `chunked_prefill_budget` per step. `mixed=False` runs a step
with pending prompt work as a prefill-only step (decodes wait; SGLang without mixed
chunks).

Sources: vLLM `SchedulerConfig` (docs.vllm.ai, vllm/config/scheduler.py); TensorRT-LLM
performance tuning guide, "Tuning Max Batch Size and Max Num Tokens"; SGLang server
arguments. The defaults (256 sequences, 8192 tokens) are vLLM's OpenAI-server values on
data-center GPUs; set them to the engine's actual flags.
"""

import equinox as eqx
from jaxtyping import Array

from ..core.checks import check_fields, concrete
from ..core.relax import as_float

__all__ = ["Scheduler"]

_F = dict(converter=as_float)


class Scheduler(eqx.Module):
    """Limits of a serving engine's step scheduler (module docstring).

    All limits are float leaves (relaxable, vmappable): `max_batch` requests running at
    once [requests], `max_tokens_per_step` tokens per step [tokens] and
    `chunked_prefill_budget` prompt tokens per step [tokens], `reserved_output` the
    share of a request's output tokens whose KV cache counts against admission [1];
    `mixed` is a policy.
    """

    max_batch: Array = eqx.field(**_F, default=256.0)
    max_tokens_per_step: Array = eqx.field(**_F, default=8192.0)
    chunked_prefill_budget: Array = eqx.field(**_F, default=8192.0)
    reserved_output: Array = eqx.field(**_F, default=1.0)
    mixed: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_fields(
            self,
            positive=("max_batch", "max_tokens_per_step", "chunked_prefill_budget"),
            fraction=("reserved_output",),
        )
        b, m = concrete(self.max_batch), concrete(self.max_tokens_per_step)
        if b is not None and m is not None and self.mixed and b >= m:
            raise ValueError(
                f"Scheduler(max_batch={b:g}) must be < max_tokens_per_step={m:g} "
                "(every running request decodes one token per step)"
            )
