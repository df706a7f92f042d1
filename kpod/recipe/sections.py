"""The static recipe sections (everything but the component sections and ``student``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kpod.recipe.base import Seed, Strict


class TemplateConfig(Strict):
    """The prompt template shared by training and evaluation (see kpod.data.template)."""

    question_prefix: str = "Q: "
    answer_prefix: str = " A:"
    trigger: str = Field("Let's think step by step.", description="zero-shot CoT trigger")
    answer_sentence: str = Field(
        "Therefore, the answer is {answer}", description="must contain '{answer}'"
    )
    use_rationale: bool = Field(True, description="false: answer-only training (no rationale)")

    @model_validator(mode="after")
    def _has_answer_slot(self) -> TemplateConfig:
        if "{answer}" not in self.answer_sentence:
            raise ValueError("answer_sentence must contain '{answer}'")
        return self


class StepSplitterConfig(Strict):
    mode: Literal["default", "period"] = Field(
        "default", description="default: each line a step, else cut after '.' + space or end, never inside a number (docs/method.md); period: the paper's plain '.' split"
    )


class TrainConfig(Strict):
    epochs: int = Field(3, ge=0, description="one curriculum stage per epoch")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(32, ge=1, description="micro-batch size (per process)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(50, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR / peak LR for decay")
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs that support it, else fp32"
    )
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="steps; 0 = at the end of each epoch")
    keep_checkpoints: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    packing: bool | Literal["auto"] = Field(
        "auto",
        description="padding-free packing of causal micro-batches (position ids restart per sequence, "
        "attention kept within it), also in the step-difficulty pass and a causal mask-learning predictor's "
        "passes; auto: on for causal students whose attention passes a packed-vs-padded probe, off for seq2seq "
        "(those get length-grouped batches)",
    )
    loss_chunk_tokens: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="LM head + log-softmax over this many target tokens at a time, never the full "
        "[batch, tokens, vocab] logits (also in the step-difficulty pass, at the step tokens only); 0: full "
        "logits; auto: 256 where the head is a plain linear layer and the run is not FSDP",
    )
    compile: bool = Field(False, description="torch.compile the student for training (off: it does not pay on CPU)")
    group_by_length: bool = Field(
        False,
        description="micro-batches of similar lengths (sorted within groups of 50 batches, batch order shuffled): "
        "less padding where packing does not apply (seq2seq students); changes which samples share a batch",
    )
    group_by_question: bool = Field(
        False,
        description="micro-batches of whole questions: all records sharing a question_id (e.g. several teacher "
        "rationales) in one micro-batch, so on one rank; batch_size counts records, a larger question is a "
        "micro-batch of its own; not with group_by_length",
    )

    @model_validator(mode="after")
    def _one_batch_grouping(self) -> TrainConfig:
        if self.group_by_question and self.group_by_length:
            raise ValueError(
                "train.group_by_question and train.group_by_length cannot both be true (micro-batches of whole "
                "questions, or of similar lengths); set one of them to false"
            )
        return self


class VllmEvalConfig(Strict):
    """Options of the vLLM engine (``eval.backend: vllm``; docs/scaling.md)."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1,
        description="fraction of the GPU's memory vLLM takes for weights and KV cache (must be free when it starts)",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="float32: the precision kpod's own path evaluates a default (student.dtype: fp32) model in, "
        "so predictions match it; bfloat16/float16 are faster and may break near-ties differently; "
        "auto: vLLM's choice (half precision for a float32 checkpoint)",
    )
    enforce_eager: bool = Field(False, description="no CUDA graphs (faster start, slower decoding)")


class EvalConfig(Strict):
    splits: list[str] = ["validation", "test", "ood"]
    batch_size: int = Field(128, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    limit: int | None = Field(None, ge=1, description="evaluate at most this many per split")
    select_on: str | None = Field(
        "validation",
        description="model selection (the paper's protocol): evaluate on this split during "
        "training, keep the best checkpoint and report every split on it; null: the final model",
    )
    select_every_steps: int | None = Field(
        None, ge=1, description="evaluate for selection every N optimizer steps (default: every epoch end)"
    )
    select_limit: int | None = Field(
        None, ge=1, description="evaluate at most this many select_on questions per selection pass"
    )
    backend: Literal["kpod", "hf", "vllm"] = Field(
        "kpod",
        description="kpod: kpod's greedy loop for causal students (length-sorted batches, finished sequences "
        "leave the batch); hf: transformers' model.generate (seq2seq students always use it); vllm: a vLLM "
        "engine over the saved model for the final evaluation and `kpod eval` (optional extra, needs a CUDA "
        "GPU, causal students without LoRA, one process; model selection during training uses kpod)",
    )
    stop_at_answer: bool = Field(
        True,
        description="backend kpod: a sequence also stops once it has written 'the answer is X' and one more "
        "character (checked every 8 tokens; its output is a prefix of the run to EOS); vllm runs to EOS",
    )
    vllm: VllmEvalConfig = Field(VllmEvalConfig(), description="backend vllm: engine options")


class DifficultyConfig(Strict):
    """Step difficulty, Eq. 8 (used by schedulers that need it)."""

    within_step: Literal["softmax", "mean", "normalized"] = Field(
        "softmax", description="normalisation of token weights within a step; mean = w.o.-sig-dif"
    )
    batch_size: int = Field(64, ge=1)


class ClustersConfig(Strict):
    """Question clusters for the diversity term of Eq. 12 (used by schedulers that need them)."""

    k: int = Field(5, ge=1)
    embedder: Literal["student_embedding", "hashed_bow", "glove"] = "student_embedding"
    glove_path: str | None = Field(None, description="GloVe text file (embedder: glove)")
    hash_dim: int = Field(256, ge=8)
    restarts: int = Field(10, ge=1)
    seed: Seed | None = Field(None, description="k-means seed (default: the recipe seed)")


class TrackConfig(Strict):
    """Experiment trackers (TensorBoard, wandb) through accelerate's tracker API; docs/tracking.md.

    metrics.jsonl stays the source of truth and is always written; trackers get a copy of its events.
    """

    backends: list[Literal["tensorboard", "wandb"]] = Field(
        ["tensorboard"], min_length=1,
        description="tensorboard (pip install 'kpod[tensorboard]'), wandb (pip install 'kpod[wandb]')",
    )
    project: str = Field("kpod", min_length=1, description="tracker project (wandb project; TensorBoard folder under dir)")
    run_name: str | None = Field(None, description="default: the run directory's name")
    group: str | None = Field(None, description="groups runs (kpod ablate sets it to the sweep's directory name)")
    tags: list[str] = Field([], description="free-form labels (kpod ablate adds the variant)")
    dir: str | None = Field(None, description="where tracker files go (default: RUN_DIR/tracking)")


class DataConfigBase(Strict):
    """Where the examples come from (`source`, a component) and how they are rendered and split."""

    template: TemplateConfig = TemplateConfig()
    step_splitter: StepSplitterConfig = StepSplitterConfig()
    max_length: int = Field(1024, ge=8, description="longest tokenized example allowed (capped at the student's positions)")
    on_too_long: Literal["error", "skip"] = Field(
        "error", description="a training example longer than max_length: stop with an error, or skip it (counted and listed in summary.json)"
    )
    max_unknown_fraction: float = Field(
        0.01, ge=0.0, le=1.0,
        description="share of a split's tokens the student's tokenizer may map to its unknown token (<unk>: text the "
        "model cannot see) before the run stops, naming the split and the characters; any <unk> below it is a warning, "
        "and every count is in summary.json (data_report.unknown_tokens)",
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description="a malformed data row (invalid JSON or UTF-8 line, missing field, empty or unreadable answer, "
        "empty training rationale): stop with an error naming file:line, or skip it (counted and listed in summary.json); "
        "duplicate sample_ids are always an error",
    )
