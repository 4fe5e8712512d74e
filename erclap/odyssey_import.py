"""Import an Odyssey-2024 MSP-Podcast SER checkpoint into ERCLAP's SERModel, offline and without torch.

The format (``3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes`` / ``...-Categorical``): a directory with
``config.json`` (``ssl_type``, ``hidden_size``, ``classifier_hidden_layers``, ``num_classes``,
``classifier_dropout_prob``, scalar ``mean`` / ``std``, ``sampling_rate``, ``id2label``) and
``model.safetensors`` holding ``ssl_model.*`` (a Hugging Face WavLM), ``pool_model.*`` (attentive statistics
pooling) and ``ser_model.*`` (the MLP head). The model reads ``(x - mean) / (std + 1e-6)`` directly: no
per-utterance normalisation of the backbone's feature extractor is applied.

``ssl_type`` names a backbone whose architecture ships here (``microsoft/wavlm-large``,
``microsoft/wavlm-base-plus``) or a local Hugging Face model directory whose config.json describes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from erclap import hf_import, trees
from erclap.models.arch import SpeechArch, arch_from_hf_config, hf_arch, is_hf_model_dir
from erclap.models.clap import SERModel
from erclap.models.pooling import AttentiveStatisticsPooling
from erclap.models.ser_head import SERHead

_WAVLM_CONV = dict(conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                   conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                   layer_norm_eps=1e-5, hidden_act="gelu", feat_extract_activation="gelu", num_buckets=320,
                   max_bucket_distance=800)
# The architecture fields of the public Hugging Face config.json files of the backbones the Odyssey models name.
BACKBONES = {
    "microsoft/wavlm-large": dict(model_type="wavlm", hidden_size=1024, num_hidden_layers=24,
                                  num_attention_heads=16, intermediate_size=4096, feat_extract_norm="layer",
                                  do_stable_layer_norm=True, **_WAVLM_CONV),
    "microsoft/wavlm-base-plus": dict(model_type="wavlm", hidden_size=768, num_hidden_layers=12,
                                      num_attention_heads=12, intermediate_size=3072, feat_extract_norm="group",
                                      do_stable_layer_norm=False, **_WAVLM_CONV),
}
PREFIXES = ("ssl_model.", "pool_model.", "ser_model.")
DEFAULT_DROPOUT = 0.5  # the baseline's classifier_dropout_prob when config.json omits it


class OdysseyImportError(hf_import.CheckpointImportError):
  """An Odyssey directory's tensors or config.json do not describe one consistent model (details listed)."""


@dataclasses.dataclass(frozen=True)
class OdysseyConfig:
  """What an Odyssey SER directory's config.json says: backbone architecture, input and label facts."""
  source: str
  speech_arch: SpeechArch
  num_classes: int
  label_names: tuple[str, ...]   # the scores' order (id2label)
  mean: float
  std: float
  sampling_rate: int
  hidden_size: int
  head_layers: int
  head_dropout: float

  def config_overrides(self) -> dict:
    """Dotted ``config`` keys that make ``build_ser_model`` / ``build_clap_model`` build this model's parts
    (pass ``speech_arch=self.speech_arch`` to the builders: the backbone is not a config preset)."""
    return {"model.speech_pooling": "attentive_stats", "model.speech_input_mean": self.mean,
            "model.speech_input_std": self.std, "model.ser_head_layers": self.head_layers,
            "model.ser_head_hidden": self.hidden_size, "model.num_attributes": self.num_classes,
            "data.sample_rate": self.sampling_rate}


@dataclasses.dataclass(frozen=True)
class OdysseyCheckpoint(OdysseyConfig):
  """An imported Odyssey SER model: its ``OdysseyConfig`` and the Flax parameters."""
  tower_params: dict      # SpeechEncoder tree (SERModel's ``speech_tower``)
  pooling_params: dict    # AttentiveStatisticsPooling tree (``speech_pool``)
  head_params: dict       # SERHead tree (``ser_head``)

  @property
  def params(self) -> dict:
    """The SERModel (and SER-fed CLAPModel) parameter entries, by their top-level names."""
    return dict(speech_tower=self.tower_params, speech_pool=self.pooling_params, ser_head=self.head_params)

  def ser_model(self, dtype=jnp.float32) -> SERModel:
    """The SERModel these parameters belong to (inference: dropout off)."""
    return SERModel(speech_arch=self.speech_arch, num_attributes=self.num_classes, ser_head_hidden=self.hidden_size,
                    ser_head_layers=self.head_layers, dtype=dtype, speech_pooling="attentive_stats",
                    speech_input_mean=self.mean, speech_input_std=self.std)

  def label_indices(self, names: Sequence[str]) -> tuple[int, ...]:
    """Positions of ``names`` in the scores (e.g. ``schema.LABEL_NAMES`` -> reorder A/D/V to A/V/D)."""
    missing = [n for n in names if n not in self.label_names]
    if missing:
      raise KeyError(f"{self.source}: no scores for {missing}; it predicts {self.label_names}")
    return tuple(self.label_names.index(n) for n in names)


def _field(cfg: dict, key: str, kind: type, file: str, default=None):
  value = cfg.get(key, default)
  if value is None:
    raise ValueError(f"{file}: required key {key!r} is missing")
  try:
    out = kind(value)
  except (TypeError, ValueError):
    raise ValueError(f"{file}: {key}={value!r} is not a {kind.__name__}") from None
  if kind is int and out != value:
    raise ValueError(f"{file}: {key}={value!r} is not an integer")
  return out


def _label_names(cfg: dict, num_classes: int, file: str) -> tuple[str, ...]:
  id2label = cfg.get("id2label")
  if not id2label:
    return tuple(f"class_{i}" for i in range(num_classes))
  by_index = {int(k): str(v) for k, v in id2label.items()}
  if sorted(by_index) != list(range(num_classes)):
    raise ValueError(f"{file}: id2label has indices {sorted(by_index)}, expected 0..{num_classes - 1} "
                     f"(num_classes={num_classes})")
  return tuple(by_index[i] for i in range(num_classes))


def backbone_arch(ssl_type: str, base_dir: str = "") -> SpeechArch:
  """The backbone's architecture: a shipped one (``microsoft/wavlm-large``, ``microsoft/wavlm-base-plus``,
  with or without ``microsoft/``) or a local HF directory (absolute, or relative to ``base_dir``)."""
  name = ssl_type if ssl_type in BACKBONES else f"microsoft/{ssl_type}"
  if name in BACKBONES:
    arch = arch_from_hf_config(BACKBONES[name], f"{name} (built-in architecture)")
  else:
    path = next((p for p in (ssl_type, os.path.join(base_dir, ssl_type)) if is_hf_model_dir(p)), None)
    if path is None:
      raise ValueError(f"ssl_type={ssl_type!r}: not a known backbone ({sorted(BACKBONES)}) nor a local Hugging "
                       f"Face model directory (with a config.json)")
    arch = hf_arch(path)
    if not isinstance(arch, SpeechArch):
      raise ValueError(f"ssl_type={ssl_type!r} holds a {arch.model_type} (text) model, not a speech model")
  # The SER model feeds its globally standardised waveform straight into the backbone (no HF processor).
  return dataclasses.replace(arch, normalize_waveform=False)


Mapping = dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _head_mapping(head_layers: int) -> tuple[Mapping, Mapping]:
  """Odyssey tensor name -> (Flax path under speech_pool / ser_head, transform to the Flax layout)."""
  t, ident = (lambda w: w.T), (lambda w: w)
  pool = {"pool_model.sap_linear.weight": ("sap_linear/kernel", t),
          "pool_model.sap_linear.bias": ("sap_linear/bias", ident),
          "pool_model.attention": ("attention", ident)}
  head = {}
  for i in range(head_layers):
    head[f"ser_model.fc.{i}.0.weight"] = (f"fc_{i}/dense/kernel", t)
    head[f"ser_model.fc.{i}.0.bias"] = (f"fc_{i}/dense/bias", ident)
    head[f"ser_model.fc.{i}.1.weight"] = (f"fc_{i}_norm/scale", ident)
    head[f"ser_model.fc.{i}.1.bias"] = (f"fc_{i}_norm/bias", ident)
  head["ser_model.out.0.weight"] = ("out/dense/kernel", t)
  head["ser_model.out.0.bias"] = ("out/dense/bias", ident)
  return pool, head


def _abstract_shapes(module: nn.Module, *args) -> dict[str, tuple[int, ...]]:
  return trees.leaf_shapes(jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *args)["params"])))


def _nest(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _convert_head(tensors, mapping: Mapping, shapes: dict, problems: list[str]) -> dict:
  flat = {}
  for key, (path, transform) in mapping.items():
    if key not in tensors:
      problems.append(f"  missing: {key} (for {path} {shapes[path]})")
      continue
    value = np.asarray(transform(np.asarray(tensors[key], np.float32)))
    if value.shape != shapes[path]:
      problems.append(f"  wrong shape: {key} {tuple(np.shape(tensors[key]))} -> {path} {value.shape}, "
                      f"expected {shapes[path]}")
      continue
    flat[path] = value
  return _nest(flat)


def _ssl_lines(message: str) -> list[str]:
  """The WavLM importer's report lines with the checkpoint's own names (``ssl_model.`` prefix) restored."""
  out = []
  for line in message.splitlines()[1:]:
    kind, _, rest = line.strip().partition(": ")
    out.append(f"  {kind}: {PREFIXES[0] + rest if kind in ('missing', 'unexpected', 'wrong shape') else rest}")
  return out


def convert_odyssey_tensors(arch: SpeechArch, tensors: dict[str, np.ndarray], *, head_layers: int,
                            num_classes: int, source: str = "checkpoint") -> tuple[dict, dict, dict]:
  """Odyssey tensors -> (tower, pooling, head) Flax parameter trees (float32 numpy).

  One OdysseyImportError lists every missing, unexpected and mis-shaped tensor of all three parts.
  """
  h = arch.hidden_size
  pool_map, head_map = _head_mapping(head_layers)
  pool_shapes = _abstract_shapes(AttentiveStatisticsPooling(), jnp.zeros((1, 2, h)), jnp.ones((1, 2), bool))
  head_shapes = _abstract_shapes(SERHead(out_dim=num_classes, hidden=h, num_layers=head_layers),
                                 jnp.zeros((1, 2 * h)))
  problems: list[str] = []
  pooling = _convert_head(tensors, pool_map, pool_shapes, problems)
  head = _convert_head(tensors, head_map, head_shapes, problems)
  known = set(pool_map) | set(head_map)
  problems += [f"  unexpected: {k} {tuple(np.shape(tensors[k]))}" for k in sorted(tensors)
               if k not in known and not k.startswith(PREFIXES[0])]
  ssl = {k[len(PREFIXES[0]):]: v for k, v in tensors.items() if k.startswith(PREFIXES[0])}
  tower = {}
  try:
    tower = hf_import.convert_tensors(arch, ssl, source=f"{source} ssl_model.*")
  except hf_import.CheckpointImportError as e:
    problems += _ssl_lines(str(e))
  if problems:
    raise OdysseyImportError("\n".join(
        [f"{source}: tensors do not match the model its config.json describes ({arch.model_type} backbone, "
         f"hidden {h}, {head_layers} head layer(s), {num_classes} classes):"] + problems))
  return tower, pooling, head


def is_odyssey_dir(path: str) -> bool:
  """A directory whose config.json names an ``ssl_type`` backbone (the Odyssey SER format)."""
  file = os.path.join(path, "config.json") if path else ""
  if not os.path.isfile(file):
    return False
  try:
    with open(file) as f:
      cfg = json.load(f)
  except (OSError, ValueError):
    return False  # not this format; the Hugging Face reader reports the broken file
  return isinstance(cfg, dict) and "ssl_type" in cfg


def read_odyssey_config(path: str) -> OdysseyConfig:
  """An Odyssey SER directory's config.json (and, when ``ssl_type`` is a path, that backbone directory's
  config.json), checked; the weights are not read."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Odyssey SER model directory {path!r} does not exist")
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path!r} is not an Odyssey SER model directory: {file} does not exist")
  with open(file) as f:
    try:
      cfg = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{file}: not valid JSON ({e})") from e
  arch = backbone_arch(_field(cfg, "ssl_type", str, file), path)
  hidden = _field(cfg, "hidden_size", int, file)
  if hidden != arch.hidden_size:
    raise ValueError(f"{file}: hidden_size={hidden} but its backbone ssl_type={cfg['ssl_type']!r} has hidden "
                     f"size {arch.hidden_size}")
  head_layers = _field(cfg, "classifier_hidden_layers", int, file)
  num_classes = _field(cfg, "num_classes", int, file)
  if head_layers < 1 or num_classes < 1:
    raise ValueError(f"{file}: classifier_hidden_layers={head_layers} and num_classes={num_classes} must be >= 1")
  std = _field(cfg, "std", float, file)
  if not std >= 0:
    raise ValueError(f"{file}: std={std} must be >= 0")
  return OdysseyConfig(
      source=path, speech_arch=arch, num_classes=num_classes, label_names=_label_names(cfg, num_classes, file),
      mean=_field(cfg, "mean", float, file), std=std,
      sampling_rate=_field(cfg, "sampling_rate", int, file, 16000), hidden_size=hidden, head_layers=head_layers,
      head_dropout=_field(cfg, "classifier_dropout_prob", float, file, DEFAULT_DROPOUT))


def import_odyssey(path: str) -> OdysseyCheckpoint:
  """An Odyssey SER directory (config.json + model.safetensors) -> OdysseyCheckpoint. Reads nothing else
  except, when ``ssl_type`` is a path, that backbone directory's config.json."""
  cfg = read_odyssey_config(path)
  tower, pooling, head = convert_odyssey_tensors(cfg.speech_arch, hf_import.read_safetensors(path),
                                                 head_layers=cfg.head_layers, num_classes=cfg.num_classes, source=path)
  return OdysseyCheckpoint(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, tower_params=tower,
                           pooling_params=pooling, head_params=head)
