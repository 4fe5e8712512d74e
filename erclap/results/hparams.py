"""TensorBoard HParams: a run's hyper-parameters (one type per key across runs), and a sweep's experiment config.

* ``run_hparams(config)``: the flat config as the run writes it (``erclap.train``). A key's type comes from its
  declaration in ``configs/default.py``, not from this run's value, so that every run of every config gives the
  key one type: booleans stay booleans, numbers are floats (what the HParams plugin stores), everything else
  (strings, tuples) is a string. A value that is None (a required value left unset) is left out rather than
  written as a value of another type.
* ``write_experiment(logdir, hparams, metrics)``: the experiment config (the hparams plugin's ``Experiment``
  proto) as an event file in ``logdir``, the sweep directory: only the swept keys become HParams columns (not the
  whole config), with their values, and the metrics are read from the tags the runs log (``eval/<metric>``).
  ``tensorboard --logdir <root>/<sweep>`` then lists every run with its swept values and metrics.

The protos come from tensorboard's own API (``tensorboard.plugins.hparams.summary_v2``); the event file is
written with tensorboard's record framing, without TensorFlow.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from erclap import config_lib, fileio
from erclap.configs import default
from erclap.results import paper

# One fixed name: writing the experiment again replaces it (TensorBoard needs "tfevents" in the name).
EXPERIMENT_FILE = "events.out.tfevents.0.erclap-hparams-experiment"
METRIC_TAG_PREFIX = "eval/"  # the tag under which the training loop logs each evaluation metric

HParamValue = bool | float | str


@functools.cache
def _declared_kinds() -> dict[str, type]:
  """{dotted key: bool | float | str}: the kind of each key as configs/default.py declares it."""
  return {key: _kind(value) for key, value in config_lib.flat_items(default.get_config())}


def _kind(value: Any) -> type:
  if isinstance(value, bool):
    return bool
  if isinstance(value, int | float):
    return float
  return str


def hparam_value(key: str, value: Any) -> HParamValue | None:
  """``value`` of config key ``key`` as its HParams value (the key's declared kind); None when there is none.

  A value that cannot take the declared kind (None, or a string for a number) is None: left out.
  """
  if value is None:
    return None
  kind = _declared_kinds().get(key, _kind(value))
  if kind is bool:
    return value if isinstance(value, bool) else None
  if kind is float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
  return value if isinstance(value, str) else str(value)


def run_hparams(config) -> dict[str, HParamValue]:
  """The run's config as HParams, {"a.b.c": bool | float | str} (see the module docstring)."""
  values = {key: hparam_value(key, value) for key, value in config_lib.flat_items(config)}
  return {key: value for key, value in values.items() if value is not None}


def experiment_summary(hparams: Mapping[str, Sequence[Any]], metrics: Sequence[str], *,
                       time_created_secs: float | None = None):
  """The hparams plugin's experiment config, as a TensorBoard ``Summary`` proto.

  Args:
    hparams: {swept config key: its values in the sweep} (converted as ``hparam_value`` does).
    metrics: metric names; each is read from the runs' ``eval/<metric>`` scalars.
    time_created_secs: the experiment's creation time (default: now).
  """
  from tensorboard.plugins.hparams import summary_v2 as hp  # tensorboard's protos: only sweeps write them

  infos = []
  for key, values in hparams.items():
    converted = sorted({v for v in (hparam_value(key, x) for x in values) if v is not None})
    if not converted:
      raise ValueError(f"hparam {key!r}: no value of it can be written ({list(values)!r})")
    infos.append(hp.HParam(key, hp.Discrete(converted)))
  metric_infos = [hp.Metric(METRIC_TAG_PREFIX + m, display_name=paper.display_name(m),
                            description=paper.MEANINGS.get(m, "")) for m in metrics]
  return hp.hparams_config_pb(infos, metric_infos, time_created_secs=time_created_secs)


def write_experiment(logdir: str, hparams: Mapping[str, Sequence[Any]], metrics: Sequence[str]) -> str:
  """Writes the experiment config (``experiment_summary``) into ``logdir`` as ``EXPERIMENT_FILE``; returns its path.

  Local directories are written atomically; an object-store URL (``gs://``) through TensorFlow's file system.
  """
  from tensorboard.compat.proto import event_pb2
  from tensorboard.summary.writer.record_writer import RecordWriter

  now = time.time()
  events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
            event_pb2.Event(wall_time=now, step=0,
                            summary=experiment_summary(hparams, metrics, time_created_secs=now))]
  path = f"{logdir.rstrip('/')}/{EXPERIMENT_FILE}"
  if "://" in logdir:
    import tensorflow as tf  # heavy; only for object-store sweep roots, which only its file system reaches

    tf.io.gfile.makedirs(logdir)
    with tf.io.gfile.GFile(path, "wb") as f:
      _write_records(RecordWriter(f), events)
    return path
  os.makedirs(logdir, exist_ok=True)
  with fileio.atomic_open(path, "wb") as f:
    _write_records(RecordWriter(f), events)
  return path


def _write_records(writer, events) -> None:
  for event in events:
    writer.write(event.SerializeToString())
