"""GGUF checkpoints: de-quantize once, then load a plain model directory from the cache.

A recipe names a GGUF checkpoint as ``gguf_file: NAME`` beside the model's path or hub id
(``student: {model: DIR, gguf_file: NAME}``; likewise the mask-learning predictor, the attention
reference model and the local teacher). transformers can read the file directly
(``from_pretrained(DIR, gguf_file=NAME)``) but de-quantizes every tensor on each load (about 20 s
for SmolLM2-135M on 2 cores). So kpod does it once: the de-quantized model (fp32) and its
tokenizer are written with ``save_pretrained`` to ``$KPOD_CACHE/gguf/<sha256 of the file>/``,
and every later load — in this process or another — reads that directory like any local model.

* The key is the file's *content* hash (streamed sha256), so a renamed or moved copy hits the
  cache and a changed file never does.
* The directory is built aside and renamed into place with ``kpod_gguf.json`` written last
  (:func:`kpod.cache.build_dir`), so a crash never leaves a directory that a later load would
  trust; two processes converting the same file at once both succeed (the first copy wins).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from kpod.cache import build_dir, cache_root, file_sha256, verified_dir
from kpod.models.errors import StudentError, first_line

MARKER = "kpod_gguf.json"
FORMAT = "kpod-gguf-cache/1"


class GGUFError(StudentError):
    """A GGUF checkpoint cannot be found or converted (the message names the recipe field)."""


def locate(model: str, gguf_file: str, field: str, revision: str | None = None) -> Path:
    """The GGUF file on disk: ``model/gguf_file`` for a local directory, else from the hub cache."""
    if Path(model).is_dir():
        path = Path(model) / gguf_file
        if not path.is_file():
            have = sorted(p.name for p in Path(model).glob("*.gguf"))
            raise GGUFError(f"{field}: no file {gguf_file!r} in {model} (GGUF files there: {', '.join(have) or 'none'})")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=model, filename=gguf_file, revision=revision))
    except (OSError, ValueError) as e:  # hub errors are OSError (HTTP) or ValueError (offline, bad id)
        raise GGUFError(
            f"{field}: cannot get {gguf_file!r} from {model!r} ({e.__class__.__name__}: {str(e).splitlines()[0]}). "
            "Offline? Use a local directory holding the file."
        ) from None


def _dequantize(src: Path, dst: Path) -> None:
    """Read the GGUF with transformers, de-quantized to fp32, and save model + tokenizer to ``dst``."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        GgufConfig,
    )

    folder, name = str(src.parent), src.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    # dequantize=True: plain nn.Linear weights (trainable, serialisable), never the packed kernels
    model = auto.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config  # the saved directory is a plain fp32 checkpoint
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)


def _check_header(src: Path, field: str) -> None:
    """An empty file or one without the GGUF magic is refused before any parser reads it."""
    with open(src, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise GGUFError(f"{field}: {src}: an empty file, not a GGUF checkpoint")
    if magic != b"GGUF":
        raise GGUFError(f"{field}: {src}: not a GGUF file (it does not start with the GGUF magic bytes)")


def gguf_checkpoint(model: str, gguf_file: str, field: str, revision: str | None = None) -> Path:
    """A local model directory holding the de-quantized GGUF (converted on first use, then cached)."""
    src = locate(model, gguf_file, field, revision)
    digest = file_sha256(src)
    out = cache_root() / "gguf" / digest[:32]
    if verified_dir(out):  # every file checked against its digest; a damaged copy is converted again
        return out

    _check_header(src, field)

    def convert(tmp: Path) -> None:
        try:
            _dequantize(src, tmp)
        except (ValueError, KeyError, IndexError, struct.error, EOFError) as e:  # the file's parser on bad bytes
            raise GGUFError(
                f"{field}: {src}: cannot read this GGUF file ({'struct.error' if isinstance(e, struct.error) else type(e).__name__}: {first_line(e)}); "
                "it is truncated or damaged: download it again"
            ) from None
        meta: dict[str, Any] = {"format": FORMAT, "gguf_file": gguf_file, "source": str(src), "sha256": digest}
        (tmp / MARKER).write_text(json.dumps(meta, indent=1))  # last: marks the copy complete

    build_dir(out, convert, MARKER)
    return out


def resolve(model: str, gguf_file: str | None, field: str, revision: str | None = None) -> str:
    """What to pass to ``from_pretrained``: ``model`` itself, or the cached de-quantized GGUF."""
    if gguf_file is None:
        return model
    return str(gguf_checkpoint(model, gguf_file, field, revision))
