"""What a recipe asks for that this machine or this student cannot do, refused before any work.

:func:`check_capabilities` is the one call ``kpod run`` makes, before the run directory exists:
``eval.backend: vllm`` (vLLM installed, a CUDA device, one process, no LoRA adapters, a causal
student), ``train.precision: fp16`` (not for an encoder-decoder student) and ``train.packing:
true`` (not for an encoder-decoder student). The student's kind comes from the recipe
(``tiny:t5``) or its model's configuration file, without loading weights, and only where one of
these checks needs it. What the recipe alone rules out (a loss that needs the full logits with
``train.packing: true`` or an explicit ``train.loss_chunk_tokens``) is refused earlier, when the
recipe is validated (kpod/recipe/loading.py).

What needs the loaded student stays where it is loaded (kpod/engine/fastpath.py): whether its
forward takes ``position_ids`` and its attention keeps packed sequences apart (a probe batch), and
whether its LM head can be applied a chunk at a time. ``kpod eval`` checks vLLM with the same
functions, against the model it evaluates (kpod/engine/offline_eval.py).
"""

from __future__ import annotations

from kpod.data.packing import encoder_decoder_problem
from kpod.engine.distributed import check_precision
from kpod.engine.fastpath import packing_refusal
from kpod.eval import vllm_backend
from kpod.models.config import StudentConfig
from kpod.models.student import pretrained_config
from kpod.recipe import RecipeError
from kpod.recipe_types import Recipe


def check_capabilities(recipe: Recipe, processes: int = 1) -> None:
    """Every check of the recipe against this machine (``processes``: how many run it) and its
    student's kind; raises the error that names the recipe field to change."""
    check_vllm_environment(recipe, processes=processes, lora=recipe.student.lora is not None)
    needs_kind = recipe.eval.backend == "vllm" or recipe.train.precision == "fp16" or recipe.train.packing is True
    if not needs_kind:  # nothing below depends on the student's kind: its configuration is not read
        return
    encoder_decoder = student_is_encoder_decoder(recipe.student)
    check_vllm_student(recipe, encoder_decoder)
    check_precision(recipe.train.precision, encoder_decoder)
    check_packing(recipe, encoder_decoder)


def student_is_encoder_decoder(cfg: StudentConfig) -> bool:
    """The recipe's student is encoder-decoder: ``tiny:t5``, or a model whose configuration says
    so (``config.is_encoder_decoder``, read without the weights; a GGUF file is de-quantized once
    into the cache the student is then loaded from)."""
    if cfg.model.startswith("tiny:"):
        return cfg.model == "tiny:t5"
    _, _, config = pretrained_config(cfg.model, cfg.revision, cfg.trust_remote_code, cfg.gguf_file)
    return bool(config.is_encoder_decoder)


def check_packing(recipe: Recipe, is_encoder_decoder: bool) -> None:
    """``train.packing: true`` with an encoder-decoder student (``auto`` decides later, on the
    loaded student)."""
    if recipe.train.packing is True and is_encoder_decoder:
        raise packing_refusal(encoder_decoder_problem("student"))


def check_vllm_environment(recipe: Recipe, *, processes: int = 1, lora: bool = False) -> None:
    """Refuse ``eval.backend: vllm`` where it cannot run: vLLM not installed, no CUDA device,
    several processes (one engine evaluates everything), LoRA adapters (not loaded)."""
    if recipe.eval.backend != "vllm":
        return
    if not vllm_backend.vllm_importable():
        raise RecipeError(f"eval.backend: vllm, but vllm is not installed here ({vllm_backend.INSTALL_HINT}); "
                          "or use eval.backend: kpod")
    if not vllm_backend.cuda_present():
        raise RecipeError("eval.backend: vllm needs a CUDA GPU and none is present; use eval.backend: kpod")
    if processes > 1:
        raise RecipeError(f"eval.backend: vllm evaluates in one process, but {processes} are running; launch "
                          "without several processes, or use eval.backend: kpod")
    if lora:
        raise RecipeError(
            "eval.backend: vllm loads full weights, not LoRA adapters (student.lora is set): use eval.backend: "
            "kpod, or after the run `kpod export RUN/model --out merged/` and `kpod eval merged/ --recipe "
            "RUN/recipe.resolved.yaml --set eval.backend=vllm`"
        )


def check_vllm_student(recipe: Recipe, is_encoder_decoder: bool) -> None:
    """Refuse ``eval.backend: vllm`` for an encoder-decoder student."""
    if recipe.eval.backend == "vllm" and is_encoder_decoder:
        raise RecipeError(
            "eval.backend: vllm is for causal (decoder-only) students, and this one is encoder-decoder: "
            "kpod hands vLLM decoder-only prompts to continue, and current vLLM releases (the V1 engine) do "
            "not run encoder-decoder text models such as T5; use eval.backend: kpod (model.generate for seq2seq)"
        )
