"""Hugging Face checkpoint import (safetensors, no torch) for the Flax speech and text towers."""

from erclap.checkpoints.hf_import import (
    CheckpointImportError,
    convert_tensors,
    import_hf_model,
    init_from_pretrained,
    read_safetensors,
)

__all__ = ["CheckpointImportError", "convert_tensors", "import_hf_model", "init_from_pretrained",
           "read_safetensors"]
