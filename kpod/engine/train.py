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
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kpod.data.collate import StageCollator
from kpod.data.packing import pack_row_factor
from kpod.engine.checkpoint import (
    checkpoint_path,
    fault_point,
    load_training_tensors,
    trainable_state,
    training_tensors,
    write_checkpoint,
)
from kpod.engine.curriculum import CURRICULUM_FILE, AdaptiveCurriculum, restore_plan
from kpod.engine.epoch_stats import check_wanted, measure_on_ranks
from kpod.engine.fastpath import resolve_loss_chunk, resolve_packing
from kpod.engine.lr import lr_lambda
from kpod.engine.order import epoch_order, length_grouped, plain, question_grouped, rank_share
from kpod.engine.selection import load_selected, prune_selected, write_selected
from kpod.losses.chunked import head_returns_hidden
from kpod.runs import MetricsWriter
from kpod.schedulers.base import (
    PER_SAMPLE_STATS,
    CurriculumPlan,
    EpochStats,
    Scheduler,
    is_adaptive,
)


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
    evaluated_score: float | None = None  # the score of that evaluation (EpochStats.validation_score)
    # adaptive schedulers: the last epoch whose end the hook has seen (a resumed run that stops
    # at an epoch boundary must not ask the scheduler twice)
    curriculum_epoch: int = 0


class NonFiniteLossError(RuntimeError):
    pass


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
        scheduler: Scheduler | None = None,
    ) -> None:
        """``scheduler``: the one that made ``plan``; if it is adaptive (it has the epoch-end
        hook) the Trainer asks it for each next stage and grows ``plan`` in place."""
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
        self.curriculum: AdaptiveCurriculum | None = None
        if scheduler is not None and is_adaptive(scheduler):
            check_wanted(frozenset(scheduler.epoch_stats), scheduler.name)
            n_steps = {sid: collator.records[sid].n_steps for sid in self.train_ids}
            self.curriculum = AdaptiveCurriculum(scheduler, plan, n_steps)
        self.group_by_question = bool(getattr(cfg, "group_by_question", False))
        if self.group_by_question and getattr(cfg, "group_by_length", False):
            raise ValueError("train.group_by_question and train.group_by_length cannot both be set")
        self.question_of = {sid: collator.records[sid].question_id for sid in self.train_ids}
        # a loss with a non-token term (TokenLoss.extra, e.g. mcc_kd's consistency) and its count
        self.extra_count = getattr(loss_fn, "extra_count", None)

        # fast paths, decided on the bare model before any wrapper (kpod/engine/fastpath.py)
        fsdp = str(accelerator.distributed_type).endswith("FSDP")
        self.loss_chunk, self.loss_chunk_reason = resolve_loss_chunk(
            getattr(cfg, "loss_chunk_tokens", 0), model, loss_fn, fsdp
        )
        vocab = model.get_input_embeddings().num_embeddings
        self.packing, self.packing_reason = resolve_packing(
            getattr(cfg, "packing", False), model, is_encoder_decoder, vocab, accelerator.device, loss_fn
        )
        self.pack_rows_of = pack_row_factor(model)
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )

        def steps_in(epoch: int) -> int:
            return math.ceil(len(self._micro_batches(epoch)) / cfg.grad_accum)

        # grouped by question, the number of micro-batches depends on the epoch's order
        epochs = range(1, cfg.epochs + 1)
        total = sum(map(steps_in, epochs)) if self.group_by_question else cfg.epochs * steps_in(1)
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
    def _micro_batches(self, epoch: int) -> list[list[str] | None]:
        """This rank's micro-batches of ``epoch`` (sample_ids), a pure function of (seed, epoch);
        whole micro-batches go to ranks (kpod/engine/order.py)."""
        bs = self.cfg.batch_size
        if self.group_by_question:
            mbs = question_grouped(self.train_ids, self.question_of, bs, self.seed, epoch)
        elif getattr(self.cfg, "group_by_length", False):
            mbs = length_grouped(epoch_order(self.train_ids, self.seed, epoch), self.collator.length, bs,
                                 self.seed, epoch)
        else:
            mbs = plain(epoch_order(self.train_ids, self.seed, epoch), bs)
        return rank_share(mbs, self.world, self.rank)

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
            # the loss's weights without logits (a dynamic strategy's policy included)
            denom += self.loss_fn.window_weights(b, self.is_encoder_decoder).sum()
        if self.world > 1:
            denom = self.acc.reduce(denom, reduction="sum")
        if float(denom) <= 0:
            raise NonFiniteLossError("accumulation window has zero total target weight")
        n_extra = self._extra_terms(batches)
        extra_sum = torch.zeros((), dtype=torch.float64, device=dev)
        # statistics stay on the device until the window ends: one host sync per step, not per batch
        stats = torch.zeros(8, dtype=torch.float64, device=dev)  # KEYS + non-finite count
        bad: list[tuple[int, torch.Tensor]] = []
        for i, b in enumerate(batches):
            sync = i == len(batches) - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else self.acc.no_sync(self.model)
            with ctx:
                tl = self._token_loss(b)
                loss = (tl.nll * tl.weight).sum() / denom * self.world
                if tl.extra is not None and n_extra > 0:  # the window's mean extra term (kpod/losses/base.py)
                    loss = loss + tl.extra / n_extra * self.world
                if b.get("padding"):  # a rank's filler pass: same graph, zero gradient
                    self.acc.backward(loss * 0.0)
                    continue
                self.acc.backward(loss)
            with torch.no_grad():
                rat = tl.mask & ~tl.is_answer
                finite = torch.isfinite(loss.detach())
                bad.append((i, loss.detach()))
                if tl.extra is not None:
                    extra_sum += tl.extra.detach().double()
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
        extra = {}
        if self.extra_count is not None:  # the window's mean extra term (all ranks), as optimised
            if self.world > 1:
                extra_sum = self.acc.reduce(extra_sum, reduction="sum")
            extra["extra_term"] = float(extra_sum) / n_extra if n_extra else 0.0
        return {
            **extra,
            "loss": values["wsum"] / d,
            "ce_rationale": values["rat_nll"] / values["rat_n"] if values["rat_n"] else float("nan"),
            "ce_answer": values["ans_nll"] / values["ans_n"] if values["ans_n"] else float("nan"),
            "weight_mean": values["w_rat"] / values["rat_n"] if values["rat_n"] else float("nan"),
            "tokens": values["tokens"],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        }

    def _extra_terms(self, batches: list[dict[str, Any]]) -> int:
        """How many non-token terms the window holds over all ranks (0 without an extra term)."""
        if self.extra_count is None:
            return 0
        n = sum(self.extra_count(b, self.is_encoder_decoder) for b in batches if not b.get("padding"))
        if self.world > 1:
            t = self.acc.reduce(torch.tensor(float(n), device=self.acc.device), reduction="sum")
            n = int(round(float(t)))
        return n

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
        """A training micro-batch of the current epoch (``state.epoch``): ``given`` steps and, for a
        token-level curriculum (``icl``), the epoch's prefix ratio from the plan (0 otherwise)."""
        ratio = self.plan.prefix_ratio(self.state.epoch)
        if not self.packing:
            return self.collator(ids, given, ratio)
        return self.collator.packed(ids, given, self.pack_rows_of, ratio)

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
            if epoch != self.state.epoch:  # epoch boundary: select, next stage, checkpoint the finished epoch
                if not self.select_every_steps or self._wants("validation_score"):
                    self._maybe_select()
                self._end_of_epoch_curriculum()
                if every == 0:
                    self.save_checkpoint()
                self.state.epoch, self.state.micro = epoch, 0
            given = {sid: self.plan.given_steps(epoch, sid) for ids in window if ids is not None for sid in ids}
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

    # ------------------------------------------------------------------ adaptive curriculum
    def _end_of_epoch_curriculum(self) -> None:
        """Adaptive schedulers: measure the epoch that just ended and grow the plan by the next stage."""
        epoch = self.state.epoch
        if self.curriculum is None or self.state.curriculum_epoch >= epoch:
            return
        self.curriculum.advance(self.epoch_stats(epoch), self.acc, self.run_dir, self.metrics, self.state.global_step)
        self.state.curriculum_epoch = epoch

    def _wants(self, stat: str) -> bool:
        return self.curriculum is not None and stat in self.curriculum.wanted

    def epoch_stats(self, epoch: int) -> EpochStats:
        """The statistics the adaptive scheduler asks for: the per-sample ones measured now on
        every training sample, the validation score of this epoch end's selection evaluation."""
        assert self.curriculum is not None
        given = self.curriculum.given(epoch)
        out_nll: dict[str, float] = {}
        step_nll: dict[str, list[float]] = {}
        if self.curriculum.wanted & PER_SAMPLE_STATS:
            out_nll, step_nll = measure_on_ranks(self.model, self._token_nll, self.collator, self.train_ids, given,
                                                 self.curriculum.wanted, self.cfg.batch_size, self.acc)
        score = self._epoch_end_score() if self._wants("validation_score") else None
        return EpochStats(epoch=epoch, given=given, output_nll=out_nll, step_nll=step_nll, validation_score=score)

    def _epoch_end_score(self) -> float:
        """The selection score at the current step (the epoch boundary evaluated it)."""
        assert self.curriculum is not None
        if self.select is None:
            raise ValueError(f"scheduler {self.curriculum.scheduler.name!r} paces on the validation score, but "
                             "no model-selection evaluation runs: set eval.select_on")
        if self.state.evaluated_step != self.state.global_step or self.state.evaluated_score is None:
            raise RuntimeError(f"curriculum: no selection evaluation at step {self.state.global_step}")
        return self.state.evaluated_score

    def _token_nll(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss's per-token NLL of a padded batch (the training forward, fast paths included)."""
        for k in ("labels", "weights", "is_answer"):
            batch[k] = batch[k].to(self.acc.device)
        return self._token_loss(batch).nll

    # ------------------------------------------------------------------ model selection
    def _maybe_select(self) -> None:
        """Evaluate the current model once per step (a resumed run does not evaluate twice) and
        keep its trainable state in ``selected/step-N/`` if it beats the best so far (ties keep
        the earlier step)."""
        if self.select is None or self.state.evaluated_step == self.state.global_step:
            return
        step = self.state.global_step
        score = float(self.select(step))  # evaluate_split restores the training mode
        self.state.evaluated_step, self.state.evaluated_score = step, score
        if self.state.best_score is not None and score <= self.state.best_score:
            return
        state = trainable_state(self.acc.unwrap_model(self.model), self.acc.get_state_dict(self.model))
        if self.acc.is_main_process:
            write_selected(self.run_dir, step, score, state)
        self.acc.wait_for_everyone()
        self.state.best_step, self.state.best_score = step, score

    def load_selected(self) -> int | None:
        """Load the selected model's trainable state into the model; returns its step."""
        if self.state.best_step is not None:
            load_selected(self.run_dir, self.state.best_step, self.acc, self.model, self._fsdp())
        return self.state.best_step

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Atomic (kpod/engine/checkpoint.py); every rank calls it, only the main process writes."""
        self.acc.wait_for_everyone()
        tensors = training_tensors(self.acc, self.model, self.optimizer, self.lr_scheduler, self._fsdp())
        if not self.acc.is_main_process:
            return checkpoint_path(self.run_dir, self.state.global_step)
        documents: dict[str, Any] = {"plan.json": self.plan.to_json()}
        if self.curriculum is not None:
            documents[CURRICULUM_FILE] = self.curriculum.state()
        final = write_checkpoint(self.run_dir, self.state.global_step, tensors, documents, asdict(self.state),
                                 self.cfg.keep_checkpoints)
        prune_selected(self.run_dir, self.state.best_step)
        return final

    def _fsdp(self) -> bool:
        return str(self.acc.distributed_type).endswith("FSDP")

    def load_checkpoint(self, path: Path) -> None:
        load_training_tensors(path, self.acc, self.model, self.optimizer, self.lr_scheduler, self._fsdp())
        restore_plan(path, self.plan, self.curriculum, self.acc.is_main_process, self.run_dir)
        self.state = TrainState(**json.loads((path / "state.json").read_text()))
        if self.acc.is_main_process:
            prune_selected(self.run_dir, self.state.best_step)
        self.acc.wait_for_everyone()
