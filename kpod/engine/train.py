"""The training loop: one engine for every recipe (stages, accumulation, exact reduction, resume).

Reduction (spec §10(h)): for each accumulation window the engine first sums the target weights
of every micro-batch (and all-reduces them across ranks), then back-propagates
``Σ(w·ℓ) / Σw_window · world_size`` per micro-batch, so k micro-batches give exactly the gradient
of one batch k times larger and DDP's gradient averaging is undone. Accumulation is done by hand
(the Accelerator gets no ``gradient_accumulation_steps``), so nothing divides twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kpod.data.collate import StageCollator
from kpod.engine.fastpath import (
    head_returns_hidden,
    pack_row_factor,
    resolve_loss_chunk,
    resolve_packing,
)
from kpod.engine.fsdp_state import (
    full_optimizer_state,
    is_full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)
from kpod.runs import (
    MetricsWriter,
    RunDirError,
    RunWriteError,
    atomic_write_text,
    checkpoint_dirs,
    write_error,
    write_json,
)
from kpod.schedulers.base import CurriculumPlan


@dataclass
class TrainState:
    epoch: int = 1  # 1-based epoch being trained
    micro: int = 0  # index of the next micro-batch within the epoch (this rank's list)
    global_step: int = 0
    finished: bool = False
    # model selection on validation (eval.select_on): the best evaluation so far and the last
    # step evaluated; saved in every checkpoint so that a resumed run keeps its choice
    best_step: int | None = None
    best_score: float | None = None
    evaluated_step: int = 0


class NonFiniteLossError(RuntimeError):
    pass


def fault_point(point: str, step: int, half_written: Path | None = None) -> None:
    """TEST-ONLY fault injection (tests/test_reliability_runs.py); a no-op unless the environment
    sets ``KPOD_FAULT=<point>:<step>``. Then this process stops itself (SIGSTOP) at that point so
    the test can ``kill -9`` it there: ``after-step`` (step N's update and metrics are done, its
    checkpoint is not) or ``mid-checkpoint`` (checkpoint N's first file, ``half_written``, is cut
    to half its bytes). Never set it outside tests."""
    if os.environ.get("KPOD_FAULT") != f"{point}:{step}":
        return
    if half_written is not None:
        with open(half_written, "r+b") as f:
            f.truncate(os.path.getsize(half_written) // 2)
    os.kill(os.getpid(), signal.SIGSTOP)


def _load(path: Path) -> Any:
    """One checkpoint file, tensors and plain containers only (``weights_only``: no code runs)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        raise RunDirError(
            f"{path}: cannot load this checkpoint file ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); "
            f"it is damaged or was not written by kpod: remove {path.parent} to resume from the checkpoint "
            "before it, or start again with --overwrite"
        ) from None


def _save(obj: Any, path: Path) -> None:
    """torch.save through a file object (a full disk raises OSError, not torch's RuntimeError), fsynced."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def lr_lambda(cfg: Any, total_steps: int) -> Callable[[int], float]:
    warm, floor = cfg.warmup_steps, cfg.min_lr_ratio

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "constant" or total_steps <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.lr_schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def frozen_names(model: Any) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a state dict that training changes: everything, or (LoRA, frozen layers) the
    trainable parameters and buffers. The frozen rest is rebuilt from the base on resume."""
    frozen = frozen_names(model)
    return {k: v for k, v in state.items() if k not in frozen} if frozen else state


class Trainer:
    STAT_KEYS = ("wsum", "rat_nll", "rat_n", "ans_nll", "ans_n", "w_rat", "tokens")

    def __init__(
        self,
        *,
        model: Any,
        is_encoder_decoder: bool,
        collator: StageCollator,
        loss_fn: Any,
        plan: CurriculumPlan,
        train_ids: list[str],
        cfg: Any,
        seed: int,
        run_dir: Path,
        accelerator: Any,
        metrics: MetricsWriter,
        on_step: Callable[[int, int, dict[str, float]], None] | None = None,
        select: Callable[[int], float] | None = None,
        select_every_steps: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.acc = accelerator
        self.is_encoder_decoder = is_encoder_decoder
        self.collator = collator
        self.loss_fn = loss_fn
        self.plan = plan
        self.train_ids = sorted(train_ids)
        self.run_dir = run_dir
        self.metrics = metrics
        self.on_step = on_step
        # model selection: ``select(step)`` evaluates the current model (every rank calls it) and
        # returns its score, higher is better; called at every epoch end, or every
        # ``select_every_steps`` steps, and once at the end of training
        self.select = select
        self.select_every_steps = select_every_steps
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index

        # fast paths, decided on the bare model before any wrapper (kpod/engine/fastpath.py)
        fsdp = str(accelerator.distributed_type).endswith("FSDP")
        self.loss_chunk, self.loss_chunk_reason = resolve_loss_chunk(
            getattr(cfg, "loss_chunk_tokens", 0), model, loss_fn, fsdp
        )
        vocab = model.get_input_embeddings().num_embeddings
        self.packing, self.packing_reason = resolve_packing(
            getattr(cfg, "packing", False), model, is_encoder_decoder, vocab, accelerator.device
        )
        self.pack_rows_of = pack_row_factor(model)
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        self.steps_per_epoch = math.ceil(len(self._micro_batches(1)) / cfg.grad_accum)
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, self.total_steps))
        # the LR schedule is not handed to accelerate: its wrapper steps it once per process
        # (it assumes per-rank schedules), which would run the schedule W times too fast here
        self.model, self.optimizer = accelerator.prepare(model, opt)
        if getattr(cfg, "compile", False):
            self.model = torch.compile(self.model)
        self.lr_scheduler = sched
        self.state = TrainState()

    # ------------------------------------------------------------------ data order
    def epoch_order(self, epoch: int) -> list[str]:
        """Deterministic shuffle per (seed, epoch): resume needs only the position."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.train_ids), generator=g).tolist()
        return [self.train_ids[i] for i in perm]

    def _micro_batches(self, epoch: int) -> list[list[str] | None]:
        """This rank's micro-batches of ``epoch`` (sample_ids). Under several ranks, rank r takes
        micro-batches r, r + W, r + 2W, … of the one global order, so a window of k micro-batches
        on W ranks holds exactly the kW micro-batches one process with ``grad_accum = kW`` would
        see. The list is padded with ``None`` to a multiple of W (every rank must run the same
        number of backward passes); a ``None`` is a zero-weight pass, so no sample is dropped or
        counted twice."""
        order = self.epoch_order(epoch)
        bs = self.cfg.batch_size
        mbs: list[list[str] | None]
        if getattr(self.cfg, "group_by_length", False):
            mbs = list(self._length_grouped(order, epoch))
        else:
            mbs = [order[i : i + bs] for i in range(0, len(order), bs)]
        if self.world > 1:
            mbs += [None] * (-len(mbs) % self.world)
            mbs = mbs[self.rank :: self.world]
        return mbs

    def _length_grouped(self, order: list[str], epoch: int) -> list[list[str]]:
        """``train.group_by_length``: the shuffled order cut into groups of 50 micro-batches, each
        sorted by length (characters of the serialised example) and cut into micro-batches, whose
        order is then shuffled (seeded by seed and epoch): micro-batches of similar lengths, little
        padding, no length trend over the epoch (the usual ``group_by_length`` of HF Trainer)."""
        bs = self.cfg.batch_size
        group = 50 * bs
        mbs: list[list[str]] = []
        for g0 in range(0, len(order), group):
            chunk = sorted(order[g0 : g0 + group], key=self.collator.length, reverse=True)
            mbs += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7_919)
        return [mbs[i] for i in torch.randperm(len(mbs), generator=gen).tolist()]

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev = self.acc.device
        if batch.get("packed"):  # no attention mask: the restarting position ids separate the sequences
            return {"input_ids": batch["input_ids"].to(dev), "position_ids": batch["position_ids"].to(dev),
                    "use_cache": False}
        inputs = {"input_ids": batch["input_ids"].to(dev), "attention_mask": batch["attention_mask"].to(dev)}
        if self.is_encoder_decoder:
            unwrapped = self.acc.unwrap_model(self.model)
            inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(
                labels=batch["labels"].to(dev)
            )
        return inputs

    # ------------------------------------------------------------------ one window
    def _window(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        dev = self.acc.device
        for b in batches:
            for k in ("labels", "weights", "is_answer"):
                b[k] = b[k].to(dev)
        denom = torch.zeros((), dtype=torch.float32, device=dev)
        for b in batches:
            if b.get("padding"):
                continue
            w, _, _ = self.loss_fn.target_weights(b, self.is_encoder_decoder)
            denom += w.sum()
        if self.world > 1:
            denom = self.acc.reduce(denom, reduction="sum")
        if float(denom) <= 0:
            raise NonFiniteLossError("accumulation window has zero total target weight")
        # statistics stay on the device until the window ends: one host sync per step, not per batch
        stats = torch.zeros(8, dtype=torch.float64, device=dev)  # KEYS + non-finite count
        bad: list[tuple[int, torch.Tensor]] = []
        for i, b in enumerate(batches):
            sync = i == len(batches) - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else self.acc.no_sync(self.model)
            with ctx:
                tl = self._token_loss(b)
                loss = (tl.nll * tl.weight).sum() / denom * self.world
                if b.get("padding"):  # a rank's filler pass: same graph, zero gradient
                    self.acc.backward(loss * 0.0)
                    continue
                self.acc.backward(loss)
            with torch.no_grad():
                rat = tl.mask & ~tl.is_answer
                finite = torch.isfinite(loss.detach())
                bad.append((i, loss.detach()))
                stats += torch.stack([
                    (tl.nll * tl.weight).sum(), (tl.nll * rat).sum(), rat.sum(), (tl.nll * tl.is_answer).sum(),
                    tl.is_answer.sum(), (tl.weight * rat).sum(), tl.mask.sum(), (~finite).sum(),
                ]).double()
        if self.world > 1:  # log the global window, not this rank's share (and stop every rank)
            stats = self.acc.reduce(stats, reduction="sum")
        values = dict(zip(self.STAT_KEYS + ("nonfinite",), stats.tolist()))
        if values["nonfinite"] or not math.isfinite(values["wsum"]):
            self.optimizer.zero_grad(set_to_none=True)
            culprits = [(i, float(v)) for i, v in bad if not math.isfinite(float(v))]
            i, value = culprits[0] if culprits else (None, float("nan"))
            ids = ", ".join(batches[i]["sample_ids"][:16]) if i is not None else "(on another rank)"
            raise NonFiniteLossError(
                f"non-finite loss {value} at step {self.state.global_step + 1} "
                f"(epoch {self.state.epoch}); batch sample_ids: {ids}"
            )
        grad_norm = None
        if self.cfg.grad_clip:
            grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        d = float(denom)
        return {
            "loss": values["wsum"] / d,
            "ce_rationale": values["rat_nll"] / values["rat_n"] if values["rat_n"] else float("nan"),
            "ce_answer": values["ans_nll"] / values["ans_n"] if values["ans_n"] else float("nan"),
            "weight_mean": values["w_rat"] / values["rat_n"] if values["rat_n"] else float("nan"),
            "tokens": values["tokens"],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        }

    def _token_loss(self, b: dict[str, Any]) -> Any:
        """The loss's per-token values for one micro-batch: from full logits, or (chunked loss) from
        the hidden states the LM head would project, a chunk of target tokens at a time."""
        inputs = self._model_inputs(b)
        if not self.loss_chunk:
            with self.acc.autocast():
                out = self.model(**inputs)
            return self.loss_fn(out.logits, b, self.is_encoder_decoder)
        with self.acc.autocast():
            with head_returns_hidden(self.acc.unwrap_model(self.model)) as head:
                hidden = self.model(**inputs).logits
            # inside autocast: the head runs in the dtype the model's own head would use
            return self.loss_fn.from_hidden(hidden, head, b, self.is_encoder_decoder, self.loss_chunk)

    def collate(self, ids: list[str], given: Any) -> dict[str, Any]:
        if not self.packing:
            return self.collator(ids, given)
        return self.collator.packed(ids, given, self.pack_rows_of)

    def _batch(self, ids: list[str] | None, given: Any, window: list[list[str] | None]) -> dict[str, Any]:
        if ids is not None:
            return self.collate(ids, given)
        real = next((w for w in window if w is not None), None) or self.train_ids[: self.cfg.batch_size]
        b = self.collate(real[:1], given)
        b["padding"] = True
        return b

    # ------------------------------------------------------------------ loop
    def windows(self) -> Iterator[tuple[int, int, list[list[str] | None]]]:
        """Yields (epoch, micro index, window of micro-batches) from the current state on."""
        epoch = self.state.epoch
        while epoch <= self.cfg.epochs:
            mbs = self._micro_batches(epoch)
            start = self.state.micro if epoch == self.state.epoch else 0
            for m in range(start, len(mbs), self.cfg.grad_accum):
                yield epoch, m, mbs[m : m + self.cfg.grad_accum]
            epoch += 1

    def train(self) -> TrainState:
        if self.state.finished:
            return self.state
        self.model.train()
        every = self.cfg.checkpoint_every
        t_last, tok_last = time.perf_counter(), 0.0
        for epoch, m, window in self.windows():
            if self.state.global_step >= self.total_steps:
                break
            if epoch != self.state.epoch:  # epoch boundary: select, then checkpoint the finished epoch
                if not self.select_every_steps:
                    self._maybe_select()
                if every == 0:
                    self.save_checkpoint()
                self.state.epoch, self.state.micro = epoch, 0
            given = self.plan.stages[epoch - 1] if epoch - 1 < len(self.plan.stages) else None
            batches = [self._batch(ids, given, window) for ids in window]
            stats = self._window(batches)
            self.state.global_step += 1
            self.state.micro = m + len(window)
            tok_last += stats["tokens"]
            step = self.state.global_step
            if step % self.cfg.log_every == 0 or step == self.total_steps:
                now = time.perf_counter()
                stats["tokens_per_s"] = tok_last / max(now - t_last, 1e-9)
                t_last, tok_last = now, 0.0
                self.metrics.write(
                    phase="train", step=step, epoch=epoch, lr=self.lr_scheduler.get_last_lr()[0],
                    **{k: round(v, 5) for k, v in stats.items()},
                )
            if self.on_step is not None:
                self.on_step(step, epoch, stats)
            fault_point("after-step", step)
            if self.select_every_steps and step % self.select_every_steps == 0:
                self._maybe_select()
            if every and step % every == 0:
                self.save_checkpoint()
        self._maybe_select()  # the final model is always a candidate
        self.state.finished = True
        self.save_checkpoint()
        return self.state

    # ------------------------------------------------------------------ model selection
    def selected_dir(self, step: int) -> Path:
        return self.run_dir / "selected" / f"step-{step:07d}"

    def _maybe_select(self) -> None:
        """Evaluate the current model once per step (a resumed run does not evaluate twice) and
        keep its trainable state in ``selected/step-N/`` if it beats the best so far (ties keep
        the earlier step)."""
        if self.select is None or self.state.evaluated_step == self.state.global_step:
            return
        step = self.state.global_step
        score = float(self.select(step))  # evaluate_split restores the training mode
        self.state.evaluated_step = step
        if self.state.best_score is not None and score <= self.state.best_score:
            return
        state = trainable_state(self.acc.unwrap_model(self.model), self.acc.get_state_dict(self.model))
        if self.acc.is_main_process:
            final = self.selected_dir(step)
            tmp = final.with_name(final.name + ".tmp")
            try:
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
                _save(state, tmp / "model.pt")
                write_json(tmp / "selection.json", {"step": step, "score": score})
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise RunWriteError(f"selected model {final.name} not written: {write_error(tmp, e)}", e.errno) from None
        self.acc.wait_for_everyone()
        self.state.best_step, self.state.best_score = step, score

    def _prune_selected(self) -> None:
        """Keep only the selected model the state points at (older bests, and candidates from
        steps a resumed run will train again, go)."""
        root = self.run_dir / "selected"
        if not root.exists():
            return
        keep = self.selected_dir(self.state.best_step).name if self.state.best_step is not None else None
        for d in root.iterdir():
            if d.name != keep:
                shutil.rmtree(d)

    def load_selected(self) -> int | None:
        """Load the selected model's trainable state into the model; returns its step."""
        if self.state.best_step is None:
            return None
        path = self.selected_dir(self.state.best_step) / "model.pt"
        if not path.exists():
            raise RunDirError(f"{path}: the selected model (step {self.state.best_step}) is missing")
        model = self.acc.unwrap_model(self.model)
        saved = _load(path)
        if self._fsdp():
            load_full_model_state(self.model, saved)
        else:
            model.load_state_dict(saved, strict=False)
        return self.state.best_step

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Atomic: written to ``step-N.tmp`` then renamed; only the main process writes."""
        self.acc.wait_for_everyone()
        root = self.run_dir / "checkpoints"
        final = root / f"step-{self.state.global_step:07d}"
        model_state = trainable_state(self.acc.unwrap_model(self.model), self.acc.get_state_dict(self.model))
        if self._fsdp():  # gathered from every rank's shard (a collective: before the main-only part)
            optim_state = full_optimizer_state(self.model, self.optimizer.optimizer)
        if not self.acc.is_main_process:
            return final
        if (final / "state.json").exists():
            # the same step again (training ended right after a periodic checkpoint): weights,
            # optimizer and RNG are those saved; only the state changes, and atomically
            atomic_write_text(final / "state.json", json.dumps(asdict(self.state)))
            self._prune_selected()
            return final
        tmp = root / (final.name + ".tmp")
        try:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            _save(model_state, tmp / "model.pt")
            fault_point("mid-checkpoint", self.state.global_step, half_written=tmp / "model.pt")
            _save(optim_state if self._fsdp() else self.optimizer.state_dict(), tmp / "optimizer.pt")
            _save(self.lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            _save(rng, tmp / "rng.pt")
            write_json(tmp / "plan.json", self.plan.to_json())
            atomic_write_text(tmp / "state.json", json.dumps(asdict(self.state)))  # written last: marks it complete
            tmp.rename(final)
        except (OSError, RunWriteError) as e:
            shutil.rmtree(tmp, ignore_errors=True)  # best effort; a leftover step-N.tmp is removed on resume
            cause = write_error(tmp, e) if isinstance(e, OSError) else e
            raise RunWriteError(f"checkpoint {final.name} not written: {cause}", cause.errno) from None
        for old in checkpoint_dirs(self.run_dir)[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old)
        self._prune_selected()
        return final

    def _fsdp(self) -> bool:
        return str(self.acc.distributed_type).endswith("FSDP")

    def load_checkpoint(self, path: Path) -> None:
        model = self.acc.unwrap_model(self.model)
        saved = _load(path / "model.pt")
        optim = _load(path / "optimizer.pt")
        if is_full_optimizer_state(optim) != self._fsdp():
            written, now = ("without", "with") if self._fsdp() else ("with", "without")
            raise RunDirError(
                f"{path}/optimizer.pt was written {written} FSDP and this run is {now} it: resume with "
                "the launch preset the run started with"
            )
        if self._fsdp():  # every rank reads the full state and keeps its shard
            missing, unexpected = load_full_model_state(self.model, saved)
        else:
            missing, unexpected = model.load_state_dict(saved, strict=False)
        frozen = frozen_names(model)
        if unexpected or set(missing) - frozen:
            raise RunDirError(
                f"{path}/model.pt does not match the student: missing {sorted(set(missing) - frozen)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        if self._fsdp():
            load_full_optimizer_state(self.model, self.optimizer.optimizer, optim)
        else:
            self.optimizer.load_state_dict(optim)
        self.lr_scheduler.load_state_dict(_load(path / "lr_scheduler.pt"))
        rng = _load(path / "rng.pt")
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        saved_plan = CurriculumPlan.from_json(json.loads((path / "plan.json").read_text()))
        if saved_plan.stages != self.plan.stages:
            raise RunDirError(
                f"{path}: the curriculum plan differs from the one this run computed; "
                "the data, weights or scheduler changed since the checkpoint"
            )
        self.state = TrainState(**json.loads((path / "state.json").read_text()))
        if self.acc.is_main_process:
            self._prune_selected()
        self.acc.wait_for_everyone()
