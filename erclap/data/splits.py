"""Split names: a requested split -> the stored TFDS splits it is read from.

Every corpus has "train", "validation" and "test" (MSP-Podcast also "test2", "test3" where present): most store
them under those names (``by_name``). IEMOCAP is stored per session and speaker gender (``session<k>_<F|M>``) and
its folds are composed here (``iemocap_folds``): leave-one-session-out with ``data.iemocap_test_session`` = k,
train = the other sessions, validation = session k's female speaker, test = session k's male speaker;
"session<k>" is the whole session and "session<k>_F" one speaker.
"""

from __future__ import annotations


def by_name(data_config, split: str, available: list[str]) -> list[str]:
  """The stored split of that name; ValueError naming the available ones."""
  if split not in available:
    raise ValueError(f"split {split!r} of {data_config.name} does not exist; available: {sorted(available)}")
  return [split]


def iemocap_folds(data_config, split: str, available: list[str]) -> list[str]:
  """IEMOCAP's leave-one-session-out folds (see the module docstring) from its ``session<k>_<F|M>`` splits."""
  k = int(data_config.iemocap_test_session)
  sessions = sorted({int(s.split("_")[0][len("session"):]) for s in available})
  if split in available:
    return [split]
  if split.startswith("session") and split[len("session"):].isdigit():
    parts = [s for s in available if s.split("_")[0] == split]
  elif split == "train":
    if k not in sessions:
      raise ValueError(f"data.iemocap_test_session={k} is not among the built sessions {sessions}")
    parts = sorted(s for s in available if s.split("_")[0] != f"session{k}")
  elif split in ("validation", "test"):
    parts = [f"session{k}_{'F' if split == 'validation' else 'M'}"]
    parts = [s for s in parts if s in available]
  else:
    parts = []
  if not parts:
    raise ValueError(f"split {split!r} of iemocap (test session {k}) matches none of the built splits "
                     f"{sorted(available)}")
  return parts
