"""Import Hugging Face checkpoints (config.json + safetensors) into the Flax towers, without torch.

Supported: wav2vec2, HuBERT, WavLM (base models or task models: the ``wav2vec2.`` / ``hubert.`` / ``wavlm.``
prefix is stripped) and BERT, RoBERTa, DistilRoBERTa (``bert.`` / ``roberta.``). Tensors are read with
``safetensors.numpy``; every expected tensor is mapped and shape-checked, and all missing, unexpected or
mis-shaped tensors are reported in one error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from erclap import trees
from erclap.models.arch import SpeechArch, TextArch, hf_arch, is_hf_model_dir
from erclap.models.speech import SpeechEncoder
from erclap.models.text import TextEncoder, padded_vocab_size

# Present in many checkpoints but unused by an encoder tower: task heads, pre-training modules, buffers.
IGNORED_PREFIXES = ("pooler.", "lm_head.", "cls.", "classifier.", "projector.", "quantizer.", "project_q.",
                    "project_hid.", "masked_spec_embed", "embeddings.position_ids", "final_proj.",
                    "label_embs_concat", "qa_outputs.")
MODEL_PREFIXES = ("wav2vec2.", "hubert.", "wavlm.", "bert.", "roberta.")


class CheckpointImportError(ValueError):
  """A checkpoint's tensors do not fit the architecture its config.json describes (details in the message)."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a HF model directory: model.safetensors or a sharded model.safetensors.index.json."""
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(single):
    return load_file(single)
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for name in files:
      tensors.update(load_file(os.path.join(path, name)))
    return tensors
  torch_files = ("pytorch_model.bin", "pytorch_model.bin.index.json")
  if any(os.path.isfile(os.path.join(path, n)) for n in torch_files):
    raise FileNotFoundError(
        f"{path}: only pytorch_model.bin is present. ERCLAP reads safetensors without torch; convert it once "
        f"where torch is installed, e.g. `python -c \"from transformers import AutoModel; "
        f"AutoModel.from_pretrained('{path}').save_pretrained('{path}', safe_serialization=True)\"`")
  raise FileNotFoundError(f"{path}: no model.safetensors (or model.safetensors.index.json) found")


def _normalise_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in tensors.items():
    for prefix in MODEL_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    # Old checkpoints: LayerNorm gamma/beta, and torch's legacy weight_norm names.
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    key = key.replace("conv.parametrizations.weight.original0", "conv.weight_g")
    key = key.replace("conv.parametrizations.weight.original1", "conv.weight_v")
    out[key] = value
  return out


# A mapping entry: HF key -> (Flax path, transform of the numpy tensor into the Flax layout).
Mapping = dict[str, tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]]]


def _t(w):  # torch Linear (out, in) -> Flax (in, out)
  return w.T


def _ident(w):
  return w


def _attention_map(m: Mapping, hf: str, flax: tuple[str, ...], names: dict[str, str], heads: int) -> None:
  for ours, theirs in names.items():
    if ours == "out":
      m[f"{hf}.{theirs}.weight"] = (flax + (ours, "kernel"), lambda w: w.T.reshape(heads, -1, w.shape[0]))
      m[f"{hf}.{theirs}.bias"] = (flax + (ours, "bias"), _ident)
    else:
      m[f"{hf}.{theirs}.weight"] = (flax + (ours, "kernel"), lambda w: w.T.reshape(w.shape[1], heads, -1))
      m[f"{hf}.{theirs}.bias"] = (flax + (ours, "bias"), lambda b: b.reshape(heads, -1))


def _norm_map(m: Mapping, hf: str, flax: tuple[str, ...]) -> None:
  m[f"{hf}.weight"] = (flax + ("scale",), _ident)
  m[f"{hf}.bias"] = (flax + ("bias",), _ident)


def _dense_map(m: Mapping, hf: str, flax: tuple[str, ...]) -> None:
  m[f"{hf}.weight"] = (flax + ("dense", "kernel"), _t)
  m[f"{hf}.bias"] = (flax + ("dense", "bias"), _ident)


def speech_mapping(arch: SpeechArch) -> Mapping:
  m: Mapping = {}
  fe = ("feature_extractor",)
  for i in range(len(arch.conv_dim)):
    hf = f"feature_extractor.conv_layers.{i}"
    m[f"{hf}.conv.weight"] = (fe + (f"conv_{i}_kernel",), lambda w: w.transpose(2, 1, 0))
    if arch.conv_bias:
      m[f"{hf}.conv.bias"] = (fe + (f"conv_{i}_bias",), _ident)
    if arch.feat_extract_norm == "layer" or i == 0:
      _norm_map(m, f"{hf}.layer_norm", fe + (f"conv_{i}_norm",))
  if arch.feat_proj_layer_norm:
    _norm_map(m, "feature_projection.layer_norm", ("feature_projection_norm",))
  _dense_map(m, "feature_projection.projection", ("feature_projection",))
  m["encoder.pos_conv_embed.conv.weight_v"] = (("pos_conv_embed", "weight_v"), lambda w: w.transpose(2, 1, 0))
  m["encoder.pos_conv_embed.conv.weight_g"] = (("pos_conv_embed", "weight_g"), lambda w: w.reshape(-1))
  m["encoder.pos_conv_embed.conv.bias"] = (("pos_conv_embed", "bias"), _ident)
  _norm_map(m, "encoder.layer_norm", ("encoder_norm",))
  for i in range(arch.num_layers):
    hf, fl = f"encoder.layers.{i}", (f"layers_{i}",)
    _attention_map(m, f"{hf}.attention", fl + ("attention",),
                   dict(query="q_proj", key="k_proj", value="v_proj", out="out_proj"), arch.num_heads)
    if arch.model_type == "wavlm":
      att = fl + ("attention",)
      m[f"{hf}.attention.gru_rel_pos_const"] = (att + ("gru_rel_pos_const",), lambda w: w.reshape(-1))
      m[f"{hf}.attention.gru_rel_pos_linear.weight"] = (att + ("gru_rel_pos_linear", "kernel"), _t)
      m[f"{hf}.attention.gru_rel_pos_linear.bias"] = (att + ("gru_rel_pos_linear", "bias"), _ident)
      if i == 0:
        m[f"{hf}.attention.rel_attn_embed.weight"] = (att + ("rel_attn_embed",), _ident)
    _norm_map(m, f"{hf}.layer_norm", fl + ("layer_norm",))
    _norm_map(m, f"{hf}.final_layer_norm", fl + ("final_layer_norm",))
    _dense_map(m, f"{hf}.feed_forward.intermediate_dense", fl + ("intermediate",))
    _dense_map(m, f"{hf}.feed_forward.output_dense", fl + ("output",))
  return m


def text_mapping(arch: TextArch) -> Mapping:
  m: Mapping = {}
  pad_rows = padded_vocab_size(arch.vocab_size) - arch.vocab_size
  # Extra rows (zeros) only make the vocab axis divisible for tensor parallelism; never indexed.
  m["embeddings.word_embeddings.weight"] = (("word_embeddings", "embedding"),
                                            lambda w: np.pad(w, ((0, pad_rows), (0, 0))))
  m["embeddings.position_embeddings.weight"] = (("position_embeddings", "embedding"), _ident)
  m["embeddings.token_type_embeddings.weight"] = (("token_type_embeddings", "embedding"), _ident)
  _norm_map(m, "embeddings.LayerNorm", ("embeddings_norm",))
  for i in range(arch.num_layers):
    hf, fl = f"encoder.layer.{i}", (f"layers_{i}",)
    _attention_map(m, f"{hf}.attention.self", fl + ("attention",),
                   dict(query="query", key="key", value="value"), arch.num_heads)
    m[f"{hf}.attention.output.dense.weight"] = (fl + ("attention", "out", "kernel"),
                                                lambda w, h=arch.num_heads: w.T.reshape(h, -1, w.shape[0]))
    m[f"{hf}.attention.output.dense.bias"] = (fl + ("attention", "out", "bias"), _ident)
    _norm_map(m, f"{hf}.attention.output.LayerNorm", fl + ("layer_norm",))
    _dense_map(m, f"{hf}.intermediate.dense", fl + ("intermediate",))
    _dense_map(m, f"{hf}.output.dense", fl + ("output",))
    _norm_map(m, f"{hf}.output.LayerNorm", fl + ("final_layer_norm",))
  return m


def tower_shapes(arch: SpeechArch | TextArch) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flax parameter shapes of the tower ``arch`` builds (abstract init; nothing is allocated)."""
  if isinstance(arch, SpeechArch):
    module = SpeechEncoder(arch)
    n = 16000
    while arch.num_frames(n) < 2:
      n *= 2
    args = (jnp.zeros((1, n), jnp.float32), jnp.ones((1, n), bool))
  else:
    module = TextEncoder(arch)
    args = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
  abstract = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *args)["params"]))
  return {tuple(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def _nest(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def convert_tensors(arch: SpeechArch | TextArch, tensors: dict[str, np.ndarray],
                    source: str = "checkpoint") -> dict:
  """HF tensors (numpy, HF names) -> the Flax tower's parameter tree (float32 numpy).

  One error lists every missing, unexpected and mis-shaped tensor.
  """
  tensors = _normalise_keys(tensors)
  mapping = speech_mapping(arch) if isinstance(arch, SpeechArch) else text_mapping(arch)
  shapes = tower_shapes(arch)
  missing, misshaped, flat = [], [], {}
  for key, (path, transform) in mapping.items():
    if key not in tensors:
      missing.append(f"{key} (for {'/'.join(path)} {shapes.get(path)})")
      continue
    value = np.asarray(transform(np.asarray(tensors[key], dtype=np.float32)))
    if tuple(value.shape) != shapes.get(path):
      misshaped.append(f"{key} {tuple(tensors[key].shape)} -> {'/'.join(path)} {tuple(value.shape)}, "
                       f"expected {shapes.get(path)}")
      continue
    flat[path] = value
  unexpected = sorted(k for k in tensors if k not in mapping and not k.startswith(IGNORED_PREFIXES))
  unmapped = sorted(set(shapes) - {p for p, _ in mapping.values()})
  if missing or misshaped or unexpected or unmapped:
    lines = [f"{source}: tensors do not match the {arch.model_type} architecture of its config.json:"]
    lines += [f"  missing: {x}" for x in missing]
    lines += [f"  unexpected: {x} {tuple(tensors[x].shape)}" for x in unexpected]
    lines += [f"  wrong shape: {x}" for x in misshaped]
    lines += [f"  no source for Flax parameter: {'/'.join(p)}" for p in unmapped]
    raise CheckpointImportError("\n".join(lines))
  return _nest(flat)


def import_hf_model(path: str) -> tuple[SpeechArch | TextArch, dict]:
  """A HF model directory -> (architecture from its config.json, Flax tower params as a numpy tree)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Hugging Face model directory {path!r} does not exist")
  arch = hf_arch(path)
  return arch, convert_tensors(arch, read_safetensors(path), source=path)


def _check_and_merge(tower: str, source: str, target: dict, new: dict) -> dict:
  """``new`` cast to ``target``'s dtypes; CheckpointImportError listing every tree or shape difference."""
  problems = trees.mismatch_lines(trees.leaf_shapes(target), trees.leaf_shapes(new), want_name="model")
  if problems:
    raise CheckpointImportError(f"{source}: its weights do not fit the model's {tower} (was the model "
                                f"built from this checkpoint's config.json?):\n" + "\n".join(problems))
  return jax.tree.map(lambda t, n: np.asarray(n, dtype=np.asarray(t).dtype), target, new)


def init_from_pretrained(params: dict, model_config) -> dict:
  """``params`` with ``speech_tower`` / ``text_tower`` replaced by the HF checkpoints that
  ``model_config.speech_init`` / ``text_init`` name (empty: untouched). Shapes are checked; other entries
  are kept as they are."""
  params = dict(params)
  for tower, key in (("speech_tower", "speech_init"), ("text_tower", "text_init")):
    path = model_config.get(key, "")
    if not path:
      continue
    if not is_hf_model_dir(path):
      raise FileNotFoundError(f"model.{key}={path!r} is not a Hugging Face model directory (no config.json)")
    if tower not in params:
      raise KeyError(f"model.{key}: the parameter tree has no {tower!r} (it holds {sorted(params)})")
    arch, tower_params = import_hf_model(path)
    want = SpeechArch if tower == "speech_tower" else TextArch
    if not isinstance(arch, want):
      raise CheckpointImportError(f"model.{key}={path!r} holds a {arch.model_type} model, not a "
                                  f"{'speech' if want is SpeechArch else 'text'} model")
    params[tower] = _check_and_merge(tower, f"model.{key}={path!r}", params[tower], tower_params)
  return params
