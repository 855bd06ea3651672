"""A torch run's checkpoint: the weights, optimizer state and the configuration they belong to.

A run resumes from its checkpoint only when the configuration matches (:func:`config_key`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xds.schemas.errors import RunError

CHECKPOINT = "checkpoint.pt"

if TYPE_CHECKING:
    from xds.trainers.torch_backend import TorchConfig


def config_fields(settings: dict) -> dict:
    """A configuration's fields from stored JSON settings.

    Lists become tuples again; keys that start with ``_`` describe a run, not the
    configuration.
    """
    return {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in settings.items()
        if not k.startswith("_")
    }


def config_key(config: TorchConfig) -> str:
    """The settings a checkpoint must match to be resumed (unset pseudo-label mixing left out)."""
    fields = asdict(config)
    for key, unset in (("pseudo_share", None), ("pseudo_batch", 0), ("pseudo_weight", 1.0)):
        if fields[key] == unset:  # added later: checkpoints from before still resume
            del fields[key]
    return json.dumps(fields, sort_keys=True, default=list)


def save_checkpoint(out, config, network, optimizer, schedule, objective, scaler, epoch,
                     losses, classes, groups, ssl) -> None:  # fmt: skip
    """Write the run's state atomically, so a killed run resumes from its last epoch."""
    state = {
        "model": network.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "objective": objective.state_dict(),
        "scaler": scaler.state_dict(), "epoch": epoch, "losses": losses,
        "config": config_key(config), "classes": classes, "groups": groups,
        "rng": torch.get_rng_state(), "ssl": ssl.state_dict() if ssl else None,
    }  # fmt: skip
    tmp = Path(out) / f"{CHECKPOINT}.part"
    torch.save(state, tmp)
    tmp.replace(Path(out) / CHECKPOINT)  # a crash never leaves half a checkpoint


def load_checkpoint(out: Path, config: TorchConfig | None = None) -> dict | None:
    """The checkpoint in ``out`` (None when there is none).

    Raises:
        RunError: ``config`` is given and the checkpoint belongs to another configuration.
    """
    path = out / CHECKPOINT
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if config is not None and state["config"] != config_key(config):
        raise RunError(f"{path}: a checkpoint of another configuration; use a new folder")
    return state
