"""What an example and a batch hold: the label names and the arrays that enter the jitted step.

The one definition of the emotion attributes (their order is the order of every ``labels`` array), of the
batch's text and target keys (its speech keys are the speech source's, ``erclap.speech_source``), and of the
metric names that changed between releases; training, evaluation, export and inference all read them from here.
"""

from __future__ import annotations

# The emotion attributes, in the column order of every (N, 3) ``labels`` array.
LABEL_NAMES: tuple[str, ...] = ("arousal", "valence", "dominance")

# The paper's names of the retrieval Kendall tau per attribute: AOC / VOC (arousal / valence ordinal consistency).
ORDINAL_CONSISTENCY_NAMES = {"arousal": "aoc", "valence": "voc", "dominance": "doc"}

# Metric names of earlier releases -> today's. Before, ``aoc_*`` / ``voc_*`` named the anchor-wise statistic
# and ``retrieval_tau_*`` the paper's AOC / VOC; the paper's names now go to the paper's figures.
METRIC_RENAMES = {
    **{f"{old}{suffix}": f"anchor_tau_{attribute}{new_suffix}"
       for old, attribute in (("aoc", "arousal"), ("voc", "valence"))
       for suffix, new_suffix in (("_mean", ""), ("_s2t", "_s2t"), ("_t2s", "_t2s"))},
    **{f"retrieval_tau_{attribute}": name for attribute, name in ORDINAL_CONSISTENCY_NAMES.items()},
    **{f"retrieval_tau_std_{attribute}": f"{name}_std" for attribute, name in ORDINAL_CONSISTENCY_NAMES.items()},
    "retrieval_num_levels": "aoc_voc_num_levels",
    "retrieval_num_draws": "aoc_voc_num_draws",
    "retrieval_top_k": "aoc_voc_top_k",
}


def renamed_metric_message(name: str) -> str | None:
  """Why ``name`` is no longer a metric and what to use instead (None when it is not an old name)."""
  new = METRIC_RENAMES.get(name)
  if new is None:
    return None
  message = f"metric {name!r} was renamed {new!r}"
  if new.startswith("anchor_tau_"):
    message += (f" (the anchor-wise Kendall tau; the paper's {name[:3].upper()}, Kendall's tau of retrieval order, "
                f"is {name[:3]!r})")
  return message


# Keys of a host batch that enter the model besides its speech (whose keys are the speech source's,
# ``erclap.speech_source``), and the targets; strings such as ids stay on the host.
TEXT_INPUT_KEYS = ("input_ids", "attention_mask")
TARGET_KEYS = ("labels", "class_id", "valid")
