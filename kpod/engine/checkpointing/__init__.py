"""Checkpointing: what a run keeps on disk to resume, and its selected model, in one room::

    RUN_DIR/checkpoints/step-NNNNNNN/   model.pt, optimizer.pt, lr_scheduler.pt, rng.pt,
                                        plan.json, [curriculum.json], state.json (written last)
    RUN_DIR/selected/step-NNNNNNN/      model.pt, selection.json (eval.select_on's best step)

The Trainer calls one object, :class:`Checkpointer` (save, load, model selection); ``kpod run``
calls :func:`prepare_resume` before resuming; reports and commands find checkpoints with
:func:`last_checkpoint` and a run's selection evaluations with :func:`selection_history`.

``files.py``      atomic ``step-N/`` writing, safe loading, discovery, test-only fault points
``tensors.py``    the model's trainable part, optimizer, LR schedule and RNG states
``fsdp.py``       full (gathered) model and optimizer states of an FSDP-sharded student
``selection.py``  ``selected/step-N/`` files and the selection history in metrics.jsonl
``resume.py``     the cleanup of a run directory a crash or ``kill -9`` left behind
``checkpointer.py`` ``TrainState`` (state.json), the curriculum state, which selection wins
"""

from kpod.engine.checkpointing.checkpointer import Checkpointer, TrainingParts, TrainState
from kpod.engine.checkpointing.files import fault_point, last_checkpoint
from kpod.engine.checkpointing.resume import prepare_resume
from kpod.engine.checkpointing.selection import selection_history

__all__ = [
    "Checkpointer",
    "TrainState",
    "TrainingParts",
    "fault_point",
    "last_checkpoint",
    "prepare_resume",
    "selection_history",
]
