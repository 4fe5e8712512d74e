"""Keeping TensorFlow off the accelerators JAX owns: clu's summary writers and TFDS may import TensorFlow, which
would otherwise claim every GPU's memory (or the TPU) for itself."""

from __future__ import annotations

import contextlib
import sys


def hide_accelerators_from_tensorflow(*, import_tensorflow: bool = True) -> None:
  """Makes TensorFlow see no GPU and no TPU.

  Args:
    import_tensorflow: import TensorFlow first when it is installed (before clu's writers do, so that it never
      initialises an accelerator); False: act only when something has imported it already (reading ArrayRecord
      through TFDS never does, so the data layer does not pay for the import).
  """
  tf = sys.modules.get("tensorflow")
  if tf is None and import_tensorflow:
    try:
      import tensorflow as tf  # optional and heavy: only present when clu / TFDS are installed
    except ImportError:
      return
  if tf is None:
    return
  # Already initialised, or no such device type: nothing to hide then.
  with contextlib.suppress(RuntimeError, ValueError):
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
