"""The accelerators a plan can target: each chip's dense bf16 peak and memory, and topology names.

Topology names: ``v4-N`` and ``v5p-N`` count TensorCores (2 per chip: ``v4-8`` = 4 chips); ``v5e-N`` (or
``v5litepod-N``) counts chips; GPU names (``h100-8``, ``a100-40gb-8``, ``a100-80gb-8``) count GPUs. One JAX
device per chip (v4 / v5p megacore) or GPU.
"""

from __future__ import annotations

import dataclasses
import re

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  bf16_flops: float    # dense peak FLOP/s (no sparsity)
  hbm_bytes: int       # per chip (per JAX device)
  cores_per_chip: int  # what a topology name counts per chip


# Sources: Google Cloud TPU documentation, "TPU v4" / "TPU v5e" / "TPU v5p" system architecture pages (peak
# bf16 compute and HBM per chip: 275 TFLOP/s and 32 GiB; 197 TFLOP/s and 16 GiB; 459 TFLOP/s and 95 GiB);
# NVIDIA A100 Tensor Core GPU datasheet (BF16 312 TFLOP/s dense, 40 / 80 GB HBM); NVIDIA H100 Tensor Core GPU
# datasheet, SXM (BF16 989 TFLOP/s dense, 80 GB HBM3).
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 2),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 1),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2),
    "a100-40gb": Chip("NVIDIA A100 40GB", 312e12, 40 * GiB, 1),
    "a100-80gb": Chip("NVIDIA A100 80GB", 312e12, 80 * GiB, 1),
    "h100": Chip("NVIDIA H100 80GB (SXM)", 989e12, 80 * GiB, 1),
}
_CHIP_ALIASES = {"v5litepod": "v5e", "h100-80gb": "h100"}
# jax ``device_kind`` (lower case) fragments -> chip, for plan.topology="" on an accelerator.
_DEVICE_KINDS = (("v5 lite", "v5e"), ("v5e", "v5e"), ("v5p", "v5p"), ("v5", "v5p"), ("v4", "v4"),
                 ("h100", "h100"), ("a100", "a100"))
TOPOLOGY_EXAMPLES = "v4-8, v4-32, v5e-8, v5p-8, h100-8, a100-40gb-8, a100-80gb-8"


def parse_topology(topology: str) -> tuple[str, int]:
  """``"v4-32"`` -> (chip key in CHIPS, number of JAX devices = chips); ValueError naming plan.topology."""
  match = re.fullmatch(r"([a-z0-9]+(?:-\d+gb)?)-(\d+)", str(topology).strip().lower())
  key = _CHIP_ALIASES.get(match.group(1), match.group(1)) if match else None
  if key not in CHIPS:
    raise ValueError(f"plan.topology={topology!r}: use <chip>-<count> with chip one of "
                     f"{sorted(CHIPS) + sorted(_CHIP_ALIASES)}, e.g. {TOPOLOGY_EXAMPLES}")
  count, per_chip = int(match.group(2)), CHIPS[key].cores_per_chip
  if count < per_chip or count % per_chip:
    raise ValueError(f"plan.topology={topology!r}: {key} names count TensorCores, {per_chip} per chip, so the "
                     f"count must be a positive multiple of {per_chip}")
  return key, count // per_chip


def chip_of_device(device) -> str | None:
  """The CHIPS key of a JAX device (None for CPUs and chips not in the table)."""
  kind = str(getattr(device, "device_kind", "")).lower()
  for fragment, key in _DEVICE_KINDS:
    if fragment in kind:
      if key == "a100":
        return "a100-80gb" if "80" in kind else "a100-40gb"
      return key
  return None
