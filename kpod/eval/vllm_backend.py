"""The optional vLLM backend (``eval.backend: vllm``): greedy continuations from a vLLM engine
over a saved model directory.

vLLM is an optional extra (``pip install -e '.[vllm]'`` on a CUDA machine), imported only here and
only when this backend is chosen; the engine refuses the backend up front when it is missing or
no CUDA device is present (kpod/engine/capabilities.py). What makes its predictions those of kpod's
own greedy loop (:func:`kpod.eval.generate.greedy_causal` at ``stop_at_answer: false``):

* the prompts go in as token ids built by :func:`~kpod.eval.generate.causal_prompt_ids`, the
  function the kpod and hf paths use, so BOS handling is the same (vLLM never re-tokenizes them);
* ``temperature=0`` (greedy), ``max_tokens = eval.max_new_tokens``, stopping at EOS;
* the generated token ids are decoded by kpod's tokenizer exactly as the kpod path decodes its own
  (``batch_decode(..., skip_special_tokens=True)``), not by vLLM's incremental detokenizer.

What stays different: ``stop_at_answer`` has no exact vLLM equivalent (its check is a regex on
decoded text every 8 tokens), so outputs run to EOS or ``max_tokens``; a parsed answer differs from
the kpod path's only when a model writes a second "the answer is". vLLM also stops at any extra
``eos_token_id`` that the model directory's ``generation_config.json`` lists, which kpod's loop
does not; and its kernels are not kpod's, so a near-tie between two tokens may break differently,
more so in half precision (``eval.vllm.dtype``).

Not run against a real vLLM in CI or in this project's sessions so far (no GPU there):
tests/eval/test_vllm_backend.py checks this glue against a stand-in ``vllm`` module.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kpod.eval.generate import causal_prompt_ids

INSTALL_HINT = "pip install -e '.[vllm]' on a CUDA machine"


def vllm_importable() -> bool:
    """Can ``import vllm`` succeed here? (It imports the package: the backend needs it anyway.)"""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_present() -> bool:
    return torch.cuda.is_available()


@dataclass(frozen=True)
class VllmOptions:
    """What kpod passes to ``vllm.LLM`` (the recipe's ``eval.vllm`` section and seed)."""

    gpu_memory_utilization: float = 0.3
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (vLLM's own choice)
    enforce_eager: bool = False
    seed: int = 0


class VllmGenerator:
    """Greedy continuations of prompts (text in, text out) from a vLLM engine over ``model_dir``.

    One engine per generator: build it once for every split of an evaluation and :meth:`close` it
    after. Called with all of a split's prompts at once, since vLLM schedules its own batches."""

    def __init__(self, model_dir: str, tokenizer: Any, max_new_tokens: int, options: VllmOptions) -> None:
        import vllm

        self.model_dir, self.tokenizer = model_dir, tokenizer
        self.llm: Any = vllm.LLM(
            model=model_dir,
            tokenizer=model_dir,
            dtype=options.dtype,
            gpu_memory_utilization=options.gpu_memory_utilization,
            enforce_eager=options.enforce_eager,
            seed=options.seed,
        )
        # greedy; EOS ends a sequence (vLLM's default); kpod decodes the token ids itself
        self.params = vllm.SamplingParams(
            n=1, temperature=0.0, max_tokens=max_new_tokens, detokenize=False, skip_special_tokens=True
        )

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        ids = causal_prompt_ids(self.tokenizer, prompts)
        if not ids:
            return []
        outputs = self.llm.generate([{"prompt_token_ids": x} for x in ids], self.params, use_tqdm=False)
        # LLM.generate returns one output per prompt, in the order given; checked, not assumed
        if len(outputs) != len(ids) or any(list(o.prompt_token_ids) != x for o, x in zip(outputs, ids)):
            raise RuntimeError(
                f"eval.backend: vllm returned {len(outputs)} outputs for {len(ids)} prompts, or not in "
                "the order sent (prompt token ids differ); this vLLM version breaks what kpod relies on"
            )
        return self.tokenizer.batch_decode([list(o.outputs[0].token_ids) for o in outputs], skip_special_tokens=True)

    def close(self) -> None:
        """Drop the engine, so that its GPU memory can be freed when it is collected (unverified:
        this project has had no GPU session with vLLM yet)."""
        self.llm = None
        gc.collect()
        if cuda_present():
            torch.cuda.empty_cache()
