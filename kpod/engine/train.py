"""The training loop: one engine for every recipe (stages, accumulation, exact reduction, resume).

Reduction (spec §10(h)): for each accumulation window the engine first sums the target weights
of every micro-batch (and all-reduces them across ranks), then back-propagates
``Σ(w·ℓ) / Σw_window · world_size`` per micro-batch, so k micro-batches give exactly the gradient
of one batch k times larger and DDP's gradient averaging is undone. Accumulation is done by hand
(the Accelerator gets no ``gradient_accumulation_steps``), so nothing divides twice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from kpod.data.collate import StageCollator
from kpod.data.packing import batch_inputs, pack_row_factor
from kpod.engine.checkpointing import Checkpointer, TrainingParts, TrainState, fault_point
from kpod.engine.curriculum import AdaptiveCurriculum
from kpod.engine.distributed import is_fsdp
from kpod.engine.epoch_stats import check_wanted, measure_on_ranks
from kpod.engine.fastpath import resolve_loss_chunk, resolve_packing
from kpod.engine.lr import lr_lambda
from kpod.engine.order import epoch_order, length_grouped, plain, question_grouped, rank_share
from kpod.engine.window import (
    NonFiniteLossError,
    StepLog,
    WindowSums,
    is_finite,
    non_finite_error,
    window_metrics,
    window_values,
)
from kpod.losses.base import TokenLoss, TokenLossBase
from kpod.losses.chunked import head_returns_hidden
from kpod.recipe import RecipeError, TrainConfig
from kpod.runs import MetricsWriter
from kpod.schedulers.base import (
    PER_SAMPLE_STATS,
    CurriculumPlan,
    EpochStats,
    Scheduler,
    is_adaptive,
)


class Trainer:
    """The loop over a plan's stage-wise accumulation windows (every rank runs one); checkpoints
    and model selection's files through :class:`Checkpointer`."""

    def __init__(
        self,
        *,
        model: Any,
        is_encoder_decoder: bool,
        collator: StageCollator,
        loss_fn: TokenLossBase,
        plan: CurriculumPlan,
        train_ids: list[str],
        cfg: TrainConfig,
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
        self.curriculum = self._adaptive(scheduler)
        self.question_of = {sid: collator.records[sid].question_id for sid in self.train_ids}
        self._resolve_fast_paths(model)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.total_steps = self._count_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, self.total_steps))
        # the LR schedule is not handed to accelerate: its wrapper steps it once per process
        # (it assumes per-rank schedules), which would run the schedule W times too fast here
        self.model, self.optimizer = accelerator.prepare(model, opt)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.lr_scheduler = sched
        self.checkpoints = Checkpointer(run_dir, accelerator, cfg.keep_checkpoints)
        self.state = TrainState()

    def _adaptive(self, scheduler: Scheduler | None) -> AdaptiveCurriculum | None:
        """The plan's adaptive scheduler with the plan it grows (None: the plan is fixed)."""
        if scheduler is None or not is_adaptive(scheduler):
            return None
        check_wanted(frozenset(scheduler.epoch_stats), scheduler.name)
        n_steps = {sid: self.collator.records[sid].n_steps for sid in self.train_ids}
        return AdaptiveCurriculum(scheduler, self.plan, n_steps)

    def _resolve_fast_paths(self, model: Any) -> None:
        """Packing and the chunked loss, decided on the bare model before any wrapper
        (kpod/engine/fastpath.py)."""
        cfg, vocab = self.cfg, model.get_input_embeddings().num_embeddings
        self.loss_chunk, self.loss_chunk_reason = resolve_loss_chunk(cfg.loss_chunk_tokens, model, self.loss_fn,
                                                                     is_fsdp(self.acc))
        self.packing, self.packing_reason = resolve_packing(cfg.packing, model, self.is_encoder_decoder, vocab,
                                                            self.acc.device, self.loss_fn)
        self.pack_rows_of = pack_row_factor(model)
        if is_fsdp(self.acc) and (why := self.loss_fn.generates()) is not None:
            # the rollouts run the unwrapped model, whose parameters FSDP keeps sharded
            raise RecipeError(f"{why}: on-policy rollouts do not run under FSDP; use the multi_gpu (DDP) "
                              "or single-device launch")

    def _count_steps(self) -> int:
        """Optimizer steps of the whole run (the LR schedule's length), ``max_steps`` included."""
        cfg = self.cfg

        def steps_in(epoch: int) -> int:
            return math.ceil(len(self._micro_batches(epoch)) / cfg.grad_accum)

        # grouped by question, the number of micro-batches depends on the epoch's order
        epochs = range(1, cfg.epochs + 1)
        total = sum(map(steps_in, epochs)) if cfg.group_by_question else cfg.epochs * steps_in(1)
        return min(total, cfg.max_steps) if cfg.max_steps else total

    # ------------------------------------------------------------------ data order
    def _micro_batches(self, epoch: int) -> list[list[str] | None]:
        """This rank's micro-batches of ``epoch`` (sample_ids), a pure function of (seed, epoch);
        whole micro-batches go to ranks (kpod/engine/order.py)."""
        bs = self.cfg.batch_size
        if self.cfg.group_by_question:  # the recipe refuses it together with group_by_length
            mbs = question_grouped(self.train_ids, self.question_of, bs, self.seed, epoch)
        elif self.cfg.group_by_length:
            mbs = length_grouped(epoch_order(self.train_ids, self.seed, epoch), self.collator.length, bs,
                                 self.seed, epoch)
        else:
            mbs = plain(epoch_order(self.train_ids, self.seed, epoch), bs)
        return rank_share(mbs, self.world, self.rank)

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev = self.acc.device
        inputs = batch_inputs(batch, dev)
        if self.is_encoder_decoder:  # never packed (packing needs a causal student)
            unwrapped = self.acc.unwrap_model(self.model)
            inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(
                labels=batch["labels"].to(dev)
            )
        return inputs

    # ------------------------------------------------------------------ one window
    def _window(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over a window of micro-batches (spec §10(h)): the window's weight
        sum first, then backward per micro-batch, the statistics of the global window, the
        non-finite check, the step; returns the step's logged figures."""
        model = self.acc.unwrap_model(self.model)
        for i, b in enumerate(batches):
            if not b.get("padding"):  # an on-policy loss's rollouts, with the weights of this step
                batches[i] = b = self.loss_fn.on_policy_batch(b, model, self.seed, self.state.global_step)
            self._targets_to_device(b)
        denom = self._window_denominator(batches)
        n_extra = self._extra_terms(batches)
        sums = self._backward(batches, denom, n_extra)
        stats = self.acc.reduce(sums.stats, reduction="sum") if self.world > 1 else sums.stats
        values = window_values(stats)  # the global window, not this rank's share (and every rank stops)
        if not is_finite(values):
            self.optimizer.zero_grad(set_to_none=True)
            raise non_finite_error(sums.losses, batches, self.state.global_step + 1, self.state.epoch)
        grad_norm = self._optimizer_step()
        extra = {"extra_term": self._mean_extra(sums.extra, n_extra)} if self.loss_fn.has_extra_term else {}
        return {**extra, **window_metrics(values, float(denom), grad_norm)}

    def _targets_to_device(self, batch: dict[str, Any]) -> None:
        for k in ("labels", "weights", "is_answer"):
            batch[k] = batch[k].to(self.acc.device)

    def _window_denominator(self, batches: list[dict[str, Any]]) -> torch.Tensor:
        """Σw over the window's target tokens on every rank, from the loss's weights without
        logits (a dynamic strategy's policy included)."""
        denom = torch.zeros((), dtype=torch.float32, device=self.acc.device)
        for b in batches:
            if not b.get("padding"):
                denom += self.loss_fn.window_weights(b, self.is_encoder_decoder).sum()
        if self.world > 1:
            denom = self.acc.reduce(denom, reduction="sum")
        if float(denom) <= 0:
            raise NonFiniteLossError("accumulation window has zero total target weight")
        return denom

    def _extra_terms(self, batches: list[dict[str, Any]]) -> int:
        """How many non-token terms the window holds over all ranks (0 without an extra term)."""
        if not self.loss_fn.has_extra_term:
            return 0
        n = sum(self.loss_fn.extra_count(b, self.is_encoder_decoder) for b in batches if not b.get("padding"))
        if self.world > 1:
            t = self.acc.reduce(torch.tensor(float(n), device=self.acc.device), reduction="sum")
            n = int(round(float(t)))
        return n

    def _backward(self, batches: list[dict[str, Any]], denom: torch.Tensor, n_extra: int) -> WindowSums:
        """Back-propagate Σ(w·ℓ)/Σw_window · world (+ the window's mean extra term) per micro-batch;
        gradients are synchronised across ranks on the last one only."""
        sums = WindowSums.zeros(self.acc.device)
        for i, b in enumerate(batches):
            sync = i == len(batches) - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.acc.no_sync(self.model):
                tl = self._token_loss(b)
                loss = (tl.nll * tl.weight).sum() / denom * self.world
                if tl.extra is not None and n_extra > 0:  # the window's mean extra term (kpod/losses/base.py)
                    loss = loss + tl.extra / n_extra * self.world
                if b.get("padding"):  # a rank's filler pass: same graph, zero gradient
                    self.acc.backward(loss * 0.0)
                    continue
                self.acc.backward(loss)
            sums.add(i, tl, loss.detach())
        return sums

    def _optimizer_step(self) -> float | None:
        """Clip (train.grad_clip), step the optimizer and the LR schedule; the norm before clipping."""
        grad_norm = None
        if self.cfg.grad_clip:
            grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm) if grad_norm is not None else None

    def _mean_extra(self, extra_sum: torch.Tensor, n_extra: int) -> float:
        """The window's mean extra term (all ranks), as optimised."""
        if self.world > 1:
            extra_sum = self.acc.reduce(extra_sum, reduction="sum")
        return float(extra_sum) / n_extra if n_extra else 0.0

    def _token_loss(self, b: dict[str, Any]) -> TokenLoss:
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
        """Train from the current state to the last epoch (or ``max_steps``); the final model is
        always a selection candidate and the last checkpoint."""
        if self.state.finished:
            return self.state
        self.model.train()
        every = self.cfg.checkpoint_every
        log = StepLog(self.metrics, self.cfg.log_every, self.total_steps)
        for epoch, m, window in self.windows():
            if self.state.global_step >= self.total_steps:
                break
            if epoch != self.state.epoch:
                self._end_epoch(epoch)
            given = {sid: self.plan.given_steps(epoch, sid) for ids in window if ids is not None for sid in ids}
            stats = self._window([self._batch(ids, given, window) for ids in window])
            self.state.global_step += 1
            self.state.micro = m + len(window)
            step = self.state.global_step
            log(step, epoch, self.lr_scheduler.get_last_lr()[0], stats)
            if self.on_step is not None:
                self.on_step(step, epoch, stats)
            fault_point("after-step", step)
            if self.select_every_steps and step % self.select_every_steps == 0:
                self._maybe_select()
            if every and step % every == 0:
                self.save_checkpoint()
        self._maybe_select()
        self.state.finished = True
        self.save_checkpoint()
        return self.state

    def _end_epoch(self, next_epoch: int) -> None:
        """The epoch boundary: selection, the adaptive scheduler's next stage, the finished
        epoch's checkpoint (train.checkpoint_every: 0); then ``next_epoch`` starts."""
        if not self.select_every_steps or self._wants("validation_score"):
            self._maybe_select()
        self._end_of_epoch_curriculum()
        if self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
        self.state.epoch, self.state.micro = next_epoch, 0

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
        self._targets_to_device(batch)
        return self._token_loss(batch).nll

    # ------------------------------------------------------------------ model selection
    def _maybe_select(self) -> None:
        """Evaluate the current model once per step (a resumed run does not evaluate twice); the
        Checkpointer keeps it if it is the best so far."""
        if self.select is None or self.state.evaluated_step == self.state.global_step:
            return
        score = float(self.select(self.state.global_step))  # evaluate_split restores the training mode
        self.checkpoints.offer(self.state, score, self.model)

    def load_selected(self) -> int | None:
        """Load the selected model's trainable state into the model; returns its step."""
        return self.checkpoints.load_selected(self.state, self.model)

    # ------------------------------------------------------------------ checkpoints
    def _parts(self) -> TrainingParts:
        return TrainingParts(self.model, self.optimizer, self.lr_scheduler, self.plan, self.curriculum)

    def save_checkpoint(self) -> Path:
        """Every rank calls it; only the main process writes (kpod/engine/checkpointing/)."""
        return self.checkpoints.save(self.state, self._parts())

    def load_checkpoint(self, path: Path) -> None:
        self.state = self.checkpoints.load(path, self._parts())
