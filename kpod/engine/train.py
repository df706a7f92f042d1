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
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kpod.data.collate import StageCollator
from kpod.runs import MetricsWriter, atomic_write_text, checkpoint_dirs, write_json
from kpod.schedulers.base import CurriculumPlan


@dataclass
class TrainState:
    epoch: int = 1  # 1-based epoch being trained
    micro: int = 0  # index of the next micro-batch within the epoch (this rank's list)
    global_step: int = 0
    finished: bool = False


class NonFiniteLossError(RuntimeError):
    pass


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


class Trainer:
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
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index

        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        self.steps_per_epoch = math.ceil(len(self._micro_batches(1)) / cfg.grad_accum)
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, self.total_steps))
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, opt, sched)
        self.state = TrainState()

    # ------------------------------------------------------------------ data order
    def epoch_order(self, epoch: int) -> list[str]:
        """Deterministic shuffle per (seed, epoch): resume needs only the position."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.train_ids), generator=g).tolist()
        return [self.train_ids[i] for i in perm]

    def _micro_batches(self, epoch: int) -> list[list[str]]:
        order = self.epoch_order(epoch)
        bs = self.cfg.batch_size
        mbs = [order[i : i + bs] for i in range(0, len(order), bs)]
        if self.world > 1:  # each rank takes every world-th micro-batch; equal counts
            n = len(mbs) // self.world
            mbs = mbs[self.rank :: self.world][:n]
        return mbs

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev = self.acc.device
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
            w, _, _ = self.loss_fn.target_weights(b, self.is_encoder_decoder)
            denom += w.sum()
        if self.world > 1:
            denom = self.acc.reduce(denom, reduction="sum")
        if float(denom) <= 0:
            raise NonFiniteLossError("accumulation window has zero total target weight")
        stats = {"wsum": 0.0, "rat_nll": 0.0, "rat_n": 0.0, "ans_nll": 0.0, "ans_n": 0.0, "w_rat": 0.0, "tokens": 0.0}
        for i, b in enumerate(batches):
            sync = i == len(batches) - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else self.acc.no_sync(self.model)
            with ctx:
                with self.acc.autocast():
                    out = self.model(**self._model_inputs(b))
                tl = self.loss_fn(out.logits, b, self.is_encoder_decoder)
                loss = (tl.nll * tl.weight).sum() / denom * self.world
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"non-finite loss {float(loss)} at step {self.state.global_step + 1} "
                        f"(epoch {self.state.epoch}); batch sample_ids: {', '.join(b['sample_ids'][:16])}"
                    )
                self.acc.backward(loss)
            with torch.no_grad():
                rat = tl.mask & ~tl.is_answer
                stats["wsum"] += float((tl.nll * tl.weight).sum())
                stats["rat_nll"] += float((tl.nll * rat).sum())
                stats["rat_n"] += float(rat.sum())
                stats["ans_nll"] += float((tl.nll * tl.is_answer).sum())
                stats["ans_n"] += float(tl.is_answer.sum())
                stats["w_rat"] += float((tl.weight * rat).sum())
                stats["tokens"] += float(tl.mask.sum())
        grad_norm = None
        if self.cfg.grad_clip:
            grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        d = float(denom)
        return {
            "loss": stats["wsum"] / d * self.world,
            "ce_rationale": stats["rat_nll"] / stats["rat_n"] if stats["rat_n"] else float("nan"),
            "ce_answer": stats["ans_nll"] / stats["ans_n"] if stats["ans_n"] else float("nan"),
            "weight_mean": stats["w_rat"] / stats["rat_n"] if stats["rat_n"] else float("nan"),
            "tokens": stats["tokens"],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        }

    # ------------------------------------------------------------------ loop
    def windows(self) -> Iterator[tuple[int, int, list[list[str]]]]:
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
            if epoch != self.state.epoch:  # epoch boundary: checkpoint the finished epoch
                if every == 0:
                    self.save_checkpoint()
                self.state.epoch, self.state.micro = epoch, 0
            given = self.plan.stages[epoch - 1] if epoch - 1 < len(self.plan.stages) else None
            batches = [self.collator(ids, given) for ids in window]
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
            if every and step % every == 0:
                self.save_checkpoint()
        self.state.finished = True
        self.save_checkpoint()
        return self.state

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Atomic: written to ``step-N.tmp`` then renamed; only the main process writes."""
        self.acc.wait_for_everyone()
        root = self.run_dir / "checkpoints"
        final = root / f"step-{self.state.global_step:07d}"
        if not self.acc.is_main_process:
            return final
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / (final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        model = self.acc.unwrap_model(self.model)
        torch.save(model.state_dict(), tmp / "model.pt")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(self.lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "plan.json", self.plan.to_json())
        atomic_write_text(tmp / "state.json", json.dumps(asdict(self.state)))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(self.run_dir)[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old)
        return final

    def load_checkpoint(self, path: Path) -> None:
        model = self.acc.unwrap_model(self.model)
        model.load_state_dict(torch.load(path / "model.pt", weights_only=True, map_location="cpu"))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
        self.lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        saved_plan = CurriculumPlan.from_json(json.loads((path / "plan.json").read_text()))
        if saved_plan.stages != self.plan.stages:
            raise RuntimeError(
                f"{path}: the curriculum plan differs from the one this run computed; "
                "the data, weights or scheduler changed since the checkpoint"
            )
        self.state = TrainState(**json.loads((path / "state.json").read_text()))
