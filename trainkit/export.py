"""`trainkit export <checkpoint> <output> [--adapter | --merged]`: a checkpoint's model for use elsewhere.

    trainkit export <run>/checkpoints/last model.pt            the model's plain state_dict (one torch file)
    trainkit export <run>/checkpoints/last hf_folder           what the model writes itself (a Hugging Face
                                                               folder for model=hf_causal_lm: its LoRA adapter,
                                                               or the whole model after a full fine-tuning)
    trainkit export <run>/checkpoints/last hf_folder --merged  the LoRA adapters merged into the base weights

An output ending in .pt / .pth / .ckpt is always the state_dict file, read from the checkpoint
without building the model. Any other output is a folder when the run's model defines
`export_pretrained(directory, merged)`: the model is built from the run's own config.yaml (the
checkpoint's run directory), given the checkpoint's weights, and writes the folder.
"""
from __future__ import annotations

import os
from typing import Any

from trainkit.errors import UserError

FLAGS = {"--adapter": False, "--merged": True}
STATE_DICT_SUFFIXES = (".pt", ".pth", ".ckpt")


def export(checkpoint_path: str, output: str, merged: bool | None) -> str:
    """Write the export; returns the line that says what was written."""
    from trainkit import checkpoint

    path = checkpoint.resolve(checkpoint_path)
    problem = checkpoint.damage(path)
    if problem is not None:
        raise UserError(f"cannot export: {problem}")
    wants_folder = merged is not None or not output.endswith(STATE_DICT_SUFFIXES)
    model = _run_model(path) if wants_folder else None
    if model is None or not hasattr(model, "export_pretrained"):
        if merged is not None:
            raise UserError(f"{' / '.join(FLAGS)}: the model of {path} writes no folder of its own (no "
                            "export_pretrained); export its state_dict to a .pt file instead")
        count = checkpoint.export_model(path, output)
        return f"wrote {output}: the model's state_dict ({count} tensors) from {path}"
    checkpoint.load_model_weights(path, model)
    if os.path.isdir(output) and os.listdir(output):
        raise UserError(f"{output} is a folder with files in it; give a new or empty folder")
    what = model.export_pretrained(output, merged=merged)
    return f"wrote {output}: {what} from {path}"


def _run_model(path: str) -> Any:
    """The model of the run the checkpoint belongs to (<run>/checkpoints/<name>), or None when the
    checkpoint sits outside a run directory."""
    run_dir = os.path.dirname(os.path.dirname(path))
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        return None
    from hydra.utils import instantiate

    from trainkit.resume import load_run_config

    return instantiate(load_run_config(run_dir).model)
