"""Corpora: the registry, building (TFDS, ArrayRecord) and random-access reading.

``ensure_dataset(data_config)`` builds the configured corpus if it is not built yet and returns the data dir;
``get_data_source(data_config, split)`` returns a picklable random-access source (``len`` and ``__getitem__``)
of records::

  {"id": str, "audio": int16 (T,) at 16 kHz, "arousal" / "valence" / "dominance": float32 on 1–7,
   "class_id": int32 (-1 = no categorical label), "speaker": str}

Split names: "train", "validation", "test" for every corpus (MSP-Podcast also "test2", "test3" where present;
IEMOCAP's leave-one-session-out folds: ``erclap.data.splits``).

Modules, one concept each:

* ``corpora``: the registry ``CORPORA`` (name -> builder, identity, split names; adding a corpus is one
  ``register``), where corpora live (``resolve_data_dir``), the evaluation crop (``eval_crop_seconds``);
* ``prepare``: ``ensure_dataset``, building under a file lock, the source record of a licensed corpus;
* ``source``: ``get_data_source``, the random-access ``DataSource``;
* ``splits``: split names -> stored splits;
* ``builders``: the TFDS builders and the licensed corpora's source fingerprint;
* ``embedded``, ``espeak``: the synthesised corpora; ``audio``: audio I/O.

TensorFlow is never imported here: TFDS builds and reads ArrayRecord without it.
"""

from erclap.data.corpora import CORPORA, Corpus, eval_crop_seconds, register, resolve_data_dir
from erclap.data.prepare import SOURCE_RECORD, SourceChangedError, ensure_dataset, read_source_record
from erclap.data.source import DataSource, get_data_source, normalize_record

__all__ = [
    "CORPORA", "SOURCE_RECORD", "Corpus", "DataSource", "SourceChangedError", "ensure_dataset", "eval_crop_seconds",
    "get_data_source", "normalize_record", "read_source_record", "register", "resolve_data_dir",
]
