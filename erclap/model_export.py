r"""--mode=export_model: a trained model as one self-contained directory, and a TF SavedModel for serving.

  python -m erclap.main --config=configs/demo.py --workdir=workdirs/demo --mode=export_model
  model = ERCLAP.load("workdirs/demo/model")           # no workdir, training config file or corpus needed

The model directory (``<workdir>/model``; ``config.export.model_dir`` overrides) holds:

  config.json          {"erclap_model_format": 1, "step": N, "stage": ..., "config": <the training config>}
  params.safetensors   the parameters, float32, keys ``a/b/c`` (``erclap.trees.path_str`` of the Flax tree)
  tokenizer/           ``vocabulary.json`` + ``tokenizer.json`` (word level) | a checkpoint tokenizer's files
  arch/speech, arch/text  the HF ``config.json`` (+ ``preprocessor_config.json``) a tower's architecture was
                       read from, when ``model.speech_init`` / ``model.text_init`` was a HF directory
  level_prompts.json   {attribute: {levels, texts per level}}: the zero-shot prompts, lowest level first
  saved_model/         with ``config.export.saved_model`` (clap stage): a TF SavedModel, see
                       ``export_saved_model``
  manifest.json        written last: {"erclap_model_format", "algorithm": "sha256", "files": {relative path:
                       {"size", "sha256"}}} of every other file

It is assembled under a hidden temporary name beside its target and renamed into place when complete: a run
killed mid-export never leaves a partial model directory (the next export removes the debris), and an older
model directory stays readable until the new one replaces it. Only a model directory is ever replaced: an
export whose target is another existing directory (a workdir, one of its ancestors, anything that is not a model
directory) stops before any work and deletes nothing.

Loading (``load_model_dir``) checks every file it reads against the manifest (size, sha256), so a flipped bit, a
truncated file, an edited vocabulary or a missing file is an error naming the file (``ModelDirError``), and
validates the stored config's model, data and evaluation values (``erclap.config_lib``). A model directory written
before manifests existed loads with one warning that its files are not verified.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import typing

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from safetensors import numpy as safetensors_np

from erclap import (
    config_lib,
    data,
    descriptions,
    fileio,
    members,
    models,
    progress,
    resolve,
    runtime,
    sharding,
    stages,
    state,
    tokenization,
    trees,
    validation,
)
from erclap.model_files import CONFIG_FILE, MANIFEST_FILE, PARAMS_FILE, is_model_dir, model_dir_path, target_problem
from erclap.schema import LABEL_NAMES
from erclap.tensorflow_devices import hide_accelerators_from_tensorflow

MODEL_FORMAT = 1  # bump when the directory's layout or the meaning of a file changes
TOKENIZER_DIR = "tokenizer"
ARCH_DIRS = {"speech_init": os.path.join("arch", "speech"), "text_init": os.path.join("arch", "text")}
ARCH_FILES = ("config.json", "preprocessor_config.json")  # what erclap.models.hf_arch reads
PROMPTS_FILE = "level_prompts.json"
SAVED_MODEL_DIR = "saved_model"
MANIFEST_ALGORITHM = "sha256"
# The stored config's values the loaded model depends on (``validation.problems`` messages start so).
LOADED_VALUES = ("config.stage", "config.model.", "config.data.", "config.eval.")
REEXPORT = "export the model again (--mode=export_model) or copy the whole directory again from where it was exported"


class ModelDirError(ValueError):
  """A model directory that cannot be loaded as written: a damaged, changed or missing file, or a stored value that
  the config validation refuses. The message names the file and what to do."""


class LoadedModel(typing.NamedTuple):
  """A model directory, rebuilt: parameters replicated over all local devices (``mesh``)."""
  config: ml_collections.ConfigDict
  model: typing.Any
  params: dict
  tokenizer: tokenization.Tokenizer
  step: int
  mesh: jax.sharding.Mesh


# --------------------------------------------------------------------------- parameters


def flatten_params(params) -> dict[str, np.ndarray]:
  """A parameter tree (host or device arrays) -> {``a/b/c``: float32 numpy array}."""
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    leaf = np.asarray(leaf)
    if not np.issubdtype(leaf.dtype, np.floating):
      raise ValueError(f"parameter {trees.path_str(path)}: dtype {leaf.dtype} is not a float")
    flat[trees.path_str(path)] = np.array(leaf, np.float32, order="C")  # keeps 0-d shapes (ascontiguousarray: 1-d)
  return flat


def unflatten_params(flat: dict[str, np.ndarray], abstract, *, where: str) -> dict:
  """``flat`` (``flatten_params``' form) arranged as the tree ``abstract``; ValueError listing mismatches."""
  lines = trees.mismatch_lines(trees.leaf_shapes(abstract), {k: tuple(v.shape) for k, v in flat.items()},
                               have_name=PARAMS_FILE,
                               want_name=f"the model its {CONFIG_FILE} builds")
  if lines:
    raise ValueError(f"{where}: the parameters do not fit the model:\n" + "\n".join(lines))
  return jax.tree_util.tree_map_with_path(lambda path, _: flat[trees.path_str(path)], abstract)


# --------------------------------------------------------------------------- writing


def _copy_arch_files(source: str, target: str) -> None:
  os.makedirs(target)
  for name in ARCH_FILES:
    if os.path.isfile(os.path.join(source, name)):
      shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


def _write_contents(out: str, config, step: int, params, tokenizer) -> None:
  """Every file of the model directory but the SavedModel, into the (temporary) directory ``out``."""
  with fileio.atomic_path(os.path.join(out, PARAMS_FILE)) as tmp:
    safetensors_np.save_file(flatten_params(params), tmp, metadata={"erclap_model_format": str(MODEL_FORMAT),
                                                                    "step": str(step)})
  os.makedirs(os.path.join(out, TOKENIZER_DIR))
  tokenization.save_tokenizer(tokenizer, os.path.join(out, TOKENIZER_DIR))
  for key, subdir in ARCH_DIRS.items():
    if models.is_hf_model_dir(config.model.get(key, "")):
      _copy_arch_files(config.model[key], os.path.join(out, subdir))
  fileio.write_json(os.path.join(out, PROMPTS_FILE), level_prompt_texts(config))
  # Last: config.json is what makes a directory a model directory.
  fileio.write_json(os.path.join(out, CONFIG_FILE), dict(
      erclap_model_format=MODEL_FORMAT, step=int(step), stage=config.stage,
      config=json.loads(config.to_json_best_effort())))


def remove_stale_exports(target: str) -> int:
  """Removes temporary directories that an interrupted export of ``target`` left beside it; returns how many."""
  parent, name = os.path.split(os.path.abspath(target))
  removed = 0
  for entry in os.listdir(parent) if os.path.isdir(parent) else []:
    path = os.path.join(parent, entry)
    if entry.startswith(f".{name}.") and fileio.is_temp_name(entry) and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
      removed += 1
  return removed


@contextlib.contextmanager
def _atomic_dir(target: str):
  """Yields a fresh temporary directory; on success it replaces ``target`` (a directory, if any), on failure
  it is removed. The old ``target`` stays complete until the new one is in place."""
  parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(target) and not os.path.isdir(target):
    raise FileExistsError(f"{target}: a file is in the way of the model directory; move it and rerun")
  tmp = fileio.temp_path(target)
  os.makedirs(tmp)
  try:
    yield tmp
    old = None
    if os.path.isdir(target):
      old = fileio.temp_path(target)
      os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def level_prompt_texts(config) -> dict:
  """{attribute: {"levels": [...], "texts": [[...], ...]}}: the zero-shot level prompts ``predict_attributes``
  embeds (``descriptions.level_descriptions``, the wordings of one level together), for readers without ERCLAP."""
  out = {}
  for attribute in LABEL_NAMES:
    levels, texts = descriptions.level_descriptions(attribute, num_wordings=config.eval.prompt_wordings,
                                                    seed=config.seed)
    distinct = sorted({float(v) for v in levels})
    out[attribute] = dict(levels=distinct, texts=[[t for t, v in zip(texts, levels, strict=True) if float(v) == level]
                                                  for level in distinct])
  return out


def write_model_dir(model_dir: str, config, step: int, params, tokenizer, *, saved_model: bool = False) -> str:
  """Writes a model directory (see the module docstring) atomically.

  Args:
    model_dir: the directory to create or replace (local).
    config: the training config of ``params``.
    step: the training step ``params`` come from.
    params: the parameter tree (host or fully addressable device arrays).
    tokenizer: the model's tokenizer (``erclap.tokenization.Tokenizer``).
    saved_model: also write ``saved_model/`` (clap stage only; TensorFlow is imported).

  Returns:
    ``model_dir``.
  """
  if "://" in model_dir:
    raise ValueError(f"export.model_dir={model_dir!r}: the model directory must be a local path")
  stage = stages.of(config)
  if saved_model and not stage.saved_model_signatures:
    raise ValueError(f"export.saved_model=True: {stage.title} ('{stage.name}') has no SavedModel signatures; set "
                     f"export.saved_model=False")
  problem = target_problem(model_dir)
  if problem:
    raise FileExistsError(problem)
  remove_stale_exports(model_dir)
  with _atomic_dir(model_dir) as tmp:
    _write_contents(tmp, config, step, params, tokenizer)
    if saved_model:
      export_saved_model(tmp, os.path.join(tmp, SAVED_MODEL_DIR), verify=False)
    write_manifest(tmp)  # last: it vouches for every file above
  return model_dir


def export_model(config, workdir: str) -> str:
  """--mode=export_model: the checkpoint ``config.export.step`` (-1 = latest) as a model directory.

  Writes ``model_dir_path(config, workdir)``, with a TF SavedModel in its ``saved_model/`` when
  ``config.export.saved_model`` (default True; a few seconds more; skipped for a stage without SavedModel
  signatures, ``Stage.saved_model_signatures``). Reads neither the corpus nor any pre-trained tower (the
  checkpoint holds them). Process 0 writes.

  A program with members (``erclap.members``) writes one member's model: ``export.member`` (required when there
  are several), its parameters and its own config (``members.member_config``), as the standalone run of that
  member would.

  Args:
    config: the training config of the run in ``workdir``, resolved for ``export_model`` (``erclap.resolve``).
    workdir: the run's directory.

  Returns:
    The model directory.

  Raises:
    config_lib.ConfigError: the target may not be written (``model_files.target_problem``; resolution refuses it
      first), before any work.
  """
  resolve.require(config, "export_model")
  config_lib.raise_problems(resolve.mode_problems(config, "export_model", workdir), "--mode=export_model")
  member = _member(config)
  hide_accelerators_from_tensorflow()
  mesh = runtime.make_mesh(config)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens,
                                           descriptions=config.data.descriptions)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  step, params, _ = runtime.restore_params(config, workdir, model, mesh, step=config.export.step, member=member)
  host_params = sharding.to_host(params)  # an all-gather when multi-host: every process takes part
  model_dir = model_dir_path(config, workdir)
  run_config = config if member is None else members.member_config(config, member)
  if jax.process_index() == 0:
    write_model_dir(model_dir, run_config, step, host_params, tokenizer,
                    saved_model=bool(config.export.get("saved_model", True))
                    and bool(stages.of(config).saved_model_signatures))
    who = "" if member is None else f" member {member}"
    progress.print_line(f"[export_model] step {step}{who} -> {model_dir}")
  return model_dir


def _member(config) -> int | None:
  """The member ``--mode=export_model`` writes (None: an ordinary run); resolution has refused a program with
  several members that names none (``resolve.mode_problems``)."""
  return max(int(config.export.member), 0) if members.count(config) else None


# --------------------------------------------------------------------------- reading


def _files(directory: str) -> list[str]:
  """Relative paths of every file under ``directory`` but the manifest, sorted."""
  out = [os.path.relpath(os.path.join(root, name), directory) for root, _, names in os.walk(directory)
         for name in names]
  return sorted(p for p in out if p != MANIFEST_FILE)


def write_manifest(directory: str) -> None:
  """Writes ``manifest.json``: size and sha256 of every file under ``directory`` (call it last)."""
  files = {rel: dict(size=os.path.getsize(os.path.join(directory, rel)),
                     sha256=fileio.sha256_file(os.path.join(directory, rel))) for rel in _files(directory)}
  fileio.write_json(os.path.join(directory, MANIFEST_FILE),
                    dict(erclap_model_format=MODEL_FORMAT, algorithm=MANIFEST_ALGORITHM, files=files))


def verify_model_dir(path: str, *, saved_model: bool = False) -> bool:
  """Checks a model directory's files against its manifest.

  Args:
    path: the model directory.
    saved_model: also check ``saved_model/`` (which loading never reads).

  Returns:
    True when verified; False (with one warning) for a directory written before manifests existed.

  Raises:
    ModelDirError: a listed file is missing, has another size or content, or a file the loader reads is not
      listed; naming every such file.
  """
  path = os.path.abspath(path)
  manifest_path = os.path.join(path, MANIFEST_FILE)
  if not os.path.isfile(manifest_path):
    logging.warning("%s has no %s (exported before model directories carried checksums): its files are not "
                    "verified.", path, MANIFEST_FILE)
    return False
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
    listed = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in manifest["files"].items()}
    algorithm = manifest["algorithm"]
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ModelDirError(f"{manifest_path} cannot be read ({type(e).__name__}: {e}): the directory is damaged; "
                        f"{REEXPORT}") from None
  if algorithm != MANIFEST_ALGORITHM:
    raise ModelDirError(f"{manifest_path}: checksums of an unknown kind {algorithm!r}; this ERCLAP reads "
                        f"{MANIFEST_ALGORITHM!r}")
  checked = lambda rel: saved_model or not rel.startswith(SAVED_MODEL_DIR + os.sep)
  problems = []
  for rel, (size, digest) in sorted(listed.items()):
    file = os.path.join(path, rel)
    if not checked(rel):
      continue
    if not os.path.isfile(file):
      problems.append(f"{file}: missing")
    elif os.path.getsize(file) != size:
      now = os.path.getsize(file)
      problems.append(f"{file}: {now} bytes, {'shorter' if now < size else 'longer'} than the {size} the export wrote")
    elif fileio.sha256_file(file) != digest:
      problems.append(f"{file}: its content differs from the export's (sha256)")
  problems += [f"{os.path.join(path, rel)}: not written by the export" for rel in _files(path)
               if checked(rel) and rel not in listed]
  if problems:
    raise ModelDirError(f"{path}: the model directory does not match its {MANIFEST_FILE} (the checksums written at "
                        f"export), so it was changed or damaged since:\n  " + "\n  ".join(problems)
                        + f"\nNothing was loaded: {REEXPORT}.")
  return True


def _read_stored(path: str) -> dict:
  """config.json of a model directory, its format checked."""
  file = os.path.join(path, CONFIG_FILE)
  if not is_model_dir(path):
    raise FileNotFoundError(f"{path}: not an ERCLAP model directory (no {CONFIG_FILE} with erclap_model_format)")
  if not os.path.isfile(file):
    raise ModelDirError(f"{path}: the model directory's {CONFIG_FILE} is missing (it holds the model's settings, "
                        f"without which nothing can be loaded); {REEXPORT}")
  try:
    with open(file) as f:
      stored = json.load(f)
    stored_format = stored["erclap_model_format"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ModelDirError(f"{file} cannot be read as a model directory's settings ({type(e).__name__}: {e}); "
                        f"{REEXPORT}") from None
  if stored_format != MODEL_FORMAT:
    raise ValueError(f"{path}: model format {stored_format!r}; this ERCLAP reads format {MODEL_FORMAT}")
  if not isinstance(stored.get("config"), dict) or not isinstance(stored.get("step"), int):
    raise ModelDirError(f"{file}: expected an object with 'config' (the training config) and an integer 'step'; "
                        f"{REEXPORT}")
  return stored


def _check_values(config, where: str) -> None:
  """The stored values the loaded model depends on, through the config validation (``LOADED_VALUES``)."""
  try:
    problems = [p for p in validation.problems(config) if p.startswith(LOADED_VALUES)]
  except TypeError as e:  # a value of the wrong type (a string where a number belongs ...)
    raise ModelDirError(f"{where}: a stored value has the wrong type ({e}); {REEXPORT}") from None
  if problems:
    raise ModelDirError(f"{where}: the stored config has invalid values:\n  - " + "\n  - ".join(problems)
                        + f"\nThe file was edited or damaged; {REEXPORT}.")


def read_model_config(path: str, *, dtype: str | None = None,
                      verify: bool = True) -> tuple[ml_collections.ConfigDict, int]:
  """The config (rewritten to run from ``path`` on all local devices) and step of a model directory, its files
  verified against the manifest (``verify_model_dir``) and its values validated.

  ``dtype``: the compute dtype ("float32", "bfloat16", "float16"); None keeps the training config's.
  ``verify``: False skips the manifest (a directory still being written: the manifest comes last).

  Raises:
    FileNotFoundError: ``path`` is not a model directory.
    ModelDirError: a damaged, changed or missing file, or an invalid stored value (named).
  """
  path = os.path.abspath(path)
  stored = _read_stored(path)
  if verify:
    verify_model_dir(path)
  # The architecture only: the parameters hold the weights.
  arch_dirs = {key: os.path.join(path, subdir) for key, subdir in ARCH_DIRS.items()
               if os.path.isdir(os.path.join(path, subdir))}
  config = resolve.for_inference(stored["config"], dtype=dtype, arch_dirs=arch_dirs,
                                 tokenizer_dir=os.path.join(path, TOKENIZER_DIR))
  _check_values(config, os.path.join(path, CONFIG_FILE))
  return config, int(stored["step"])


def load_model_dir(path: str, *, dtype: str | None = None, verify: bool = True) -> LoadedModel:
  """Rebuilds the model of a model directory, without its workdir, training config file or corpus.

  Args:
    path: a directory ``export_model`` / ``write_model_dir`` wrote.
    dtype: compute dtype ("bfloat16": faster on accelerators); parameters stay float32. None: the training's.
    verify: check the files against the manifest (``verify_model_dir``).

  Returns:
    ``LoadedModel(config, model, params, tokenizer, step, mesh)``, parameters replicated over ``mesh`` (all
    local devices along "data").

  Raises:
    FileNotFoundError: ``path`` is not a model directory.
    ModelDirError: a damaged, changed or missing file, or an invalid stored value (named).
  """
  config, step = read_model_config(path, dtype=dtype, verify=verify)
  tokenizer = tokenization.load_saved_tokenizer(config.model.tokenizer, config.data.max_text_tokens)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  mesh = runtime.make_mesh(config)
  abstract = nn.meta.unbox(state.abstract_params(model, config))
  params_file = os.path.join(os.path.abspath(path), PARAMS_FILE)
  try:
    flat = safetensors_np.load_file(params_file)
  except Exception as e:  # safetensors reports a damaged or truncated file with its own error types
    raise ModelDirError(f"{params_file} cannot be read ({type(e).__name__}: {e}): the file is damaged or "
                        f"truncated; {REEXPORT}") from None
  host = unflatten_params(flat, abstract, where=params_file)
  replicated = sharding.replicated(mesh)
  params = jax.tree.map(lambda x: sharding.put_global(x, replicated), host)
  return LoadedModel(config, model, params, tokenizer, step, mesh)


# --------------------------------------------------------------------------- TF SavedModel


def input_shapes(config) -> tuple[int, int]:
  """(audio samples T, text tokens L) the model embeds at inference: the evaluation crop and the token limit."""
  return int(round(data.eval_crop_seconds(config.data) * config.data.sample_rate)), int(config.data.max_text_tokens)


# The inputs of each model method a SavedModel may serve (``Stage.saved_model_signatures``): their names, TF dtype
# names, and which of ``input_shapes`` is their length.
SIGNATURE_INPUTS = {"embed_audio": (("audio", "audio_mask"), ("float32", "bool"), 0),
                    "embed_text": (("input_ids", "attention_mask"), ("int32", "int32"), 1)}


def export_saved_model(source, out_dir: str, *, platforms: typing.Sequence[str] = ("cpu", "cuda"),
                       verify: bool = True) -> str:
  """A TF SavedModel of a clap-stage model's two embedding functions, for serving without JAX or ERCLAP.

  Signatures (batch size B free; T and L fixed by ``input_shapes``), each returning ``{"embedding": [B, D]}``
  float32, L2-normalised, like ``ERCLAP.embed_audio`` / ``embed_text`` after their cropping and tokenising:

    embed_audio(audio: float32 [B, T], audio_mask: bool [B, T])
    embed_text(input_ids: int32 [B, L], attention_mask: int32 [B, L])

  ``tf.saved_model.load(out_dir).signatures["embed_audio"](audio=..., audio_mask=...)["embedding"]``. The
  JAX functions are serialised as StableHLO (``jax2tf`` native serialisation) for ``platforms``; the
  parameters are TF variables. Written under a temporary name and renamed when complete.

  Args:
    source: a model directory, or a loaded model (``ERCLAP`` / ``LoadedModel``: has config, model, params).
    out_dir: the SavedModel directory to create or replace (local).
    platforms: the JAX platforms the serialised functions run on ("cpu", "cuda", "tpu").
    verify: check a model directory ``source`` against its manifest (off while the export is writing it: the
      manifest comes last).

  Returns:
    ``out_dir``.
  """
  # TensorFlow is heavy and needed only here (jax2tf imports it too): imported on use.
  import tensorflow as tf
  from jax.experimental import jax2tf

  loaded = load_model_dir(source, verify=verify) if isinstance(source, str | os.PathLike) else source
  config, model = loaded.config, loaded.model
  methods = stages.of(config).saved_model_signatures
  if not methods:
    raise ValueError(f"export_saved_model: a '{config.stage}' stage model has no SavedModel signatures (the "
                     f"cross-modal (clap) stage has)")
  lengths = input_shapes(config)
  params = jax.tree.map(np.asarray, sharding.to_host(loaded.params))
  variables = jax.tree.map(lambda x: tf.Variable(x, trainable=False), params)

  def jax_embed(method):
    return lambda p, a, b: model.apply({"params": p}, a, b, train=False, method=method)

  def serving(method, length, names, dtypes):
    converted = jax2tf.convert(jax_embed(method), polymorphic_shapes=[None, f"(b, {length})", f"(b, {length})"],
                               native_serialization_platforms=tuple(platforms), with_gradient=False)
    specs = [tf.TensorSpec([None, length], d, name=n) for n, d in zip(names, dtypes, strict=True)]
    fn = tf.function(lambda a, b: {"embedding": converted(variables, a, b)}, input_signature=specs,
                     autograph=False)
    return fn

  module = tf.Module()
  for method in methods:
    names, dtypes, length = SIGNATURE_INPUTS[method]
    setattr(module, method, serving(method, lengths[length], names, tuple(tf.as_dtype(d) for d in dtypes)))
  module.variables_list = tf.nest.flatten(variables)  # tracked, so that the SavedModel stores them
  signatures = {method: getattr(module, method).get_concrete_function() for method in methods}
  if "://" in str(out_dir):
    raise ValueError(f"{out_dir}: the SavedModel directory must be a local path")
  with _atomic_dir(str(out_dir)) as tmp:
    tf.saved_model.save(module, tmp, signatures=signatures)
  return str(out_dir)
