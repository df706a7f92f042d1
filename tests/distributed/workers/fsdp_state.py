"""Run under torchrun with 2 CPU processes: a tiny Llama sharded with FSDP2 (gloo) trains 2 AdamW
steps, saves its full model and optimizer state the way a kpod checkpoint does, takes a third
step; then a freshly initialised sharded copy loads the checkpoint and takes the same third step.
Rank 0 saves both results (full tensors) for tests/distributed/test_distributed.py to compare."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from kpod.engine.checkpointing.fsdp import (
    full_optimizer_state,
    full_state_options,
    is_full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)


def sharded(seed: int, mesh) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def step(model, opt, k: int) -> float:
    g = torch.Generator().manual_seed(100 * k + dist.get_rank())  # each rank its own batch
    ids = torch.randint(0, 64, (4, 16), generator=g)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def full(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in get_model_state_dict(model, options=full_state_options(cpu_offload=True)).items()}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model, opt = sharded(0, mesh)
    for k in range(2):
        step(model, opt, k)
    model_state, optim_state = full(model), full_optimizer_state(model, opt)  # collectives
    ckpt = out.parent / "ckpt.pt"
    if rank == 0:
        torch.save({"model": model_state, "optimizer": optim_state}, ckpt)
    dist.barrier()
    loss_a = step(model, opt, 2)
    after_a = full(model)
    shard_numel = sum(p.to_local().numel() for p in model.parameters())

    fresh, fresh_opt = sharded(1, mesh)  # different initial weights, empty optimizer
    saved = torch.load(ckpt, weights_only=True)
    missing, unexpected = load_full_model_state(fresh, saved["model"])
    load_full_optimizer_state(fresh, fresh_opt, saved["optimizer"])
    loaded = full(fresh)
    loss_b = step(fresh, fresh_opt, 2)
    after_b = full(fresh)
    if rank == 0:
        moments = [s["exp_avg"] for s in saved["optimizer"]["state"].values()]
        torch.save({
            "world": dist.get_world_size(), "missing": missing, "unexpected": unexpected,
            "full_format": is_full_optimizer_state(saved["optimizer"]),
            "n_state": len(saved["optimizer"]["state"]), "n_params": len(model_state),
            "moments_nonzero": all(bool(m.abs().sum() > 0) for m in moments),
            "shard_numel": shard_numel, "total_numel": sum(v.numel() for v in model_state.values()),
            "saved": model_state, "loaded": loaded, "loss_a": loss_a, "loss_b": loss_b,
            "after_a": after_a, "after_b": after_b,
        }, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
