"""Will a config fit, and how fast? The plan of a train step on a TPU / GPU topology, computed on a CPU.

``--mode=plan`` lowers and compiles the real train step (``erclap.step``) on abstract inputs (shape/dtype
structs that carry their shardings: no parameter or batch is allocated) over as many simulated CPU devices
as the topology has chips, and reports per device:

* parameter, optimizer-state and gradient bytes, from the abstract shapes and ``sharding.shard_shape``
  (gradients of what trains only: ``erclap.trainable``);
* argument, output, temporary (activation) bytes and the total, from XLA's ``compiled.memory_analysis()``;
* FLOPs per step, from ``compiled.cost_analysis()["flops"]``. On an SPMD program that is the cost of ONE
  device's partitioned program (a (1024, 512) @ (512, 256) matmul split over 8 devices reports 1/8 of
  2·M·K·N), so the global figure is that times the device count. XLA counts what it executes, the forward
  passes that rematerialisation repeats included: the FLOPs the step time depends on;
* the loss's share: the stage's loss and its gradient alone on the (N, width) outputs it reads, over the same
  mesh. The RNC loss sorts every row by label distance; comparisons are not FLOPs, so its share of the step time
  is larger than its share of the FLOPs.

Step time = FLOPs per device / (the chip's dense bf16 peak × ``plan.utilization``); communication is not
modelled (it hides behind compute at a good utilisation, and is what a low utilisation stands for). The
verdict compares the total with ``plan.hbm_headroom`` × the chip's HBM. The memory figures are XLA:CPU's
buffer assignment of the same program: TPU and GPU compilers fuse and schedule differently (and XLA:CPU may
compute bf16 matmuls in float32), so they are estimates to tens of percent; the headroom is for that.

A program with members (``erclap.members``) is planned as it runs on the target: the member entries, their optimizer
state and gradients K times, what is frozen once, the activations of all K members computed at once (``jax.vmap``,
what ``members.at_once`` -1 chooses on a TPU / GPU; ``as_planned``). The step is compiled a second time with
another member count, so that the per-device total splits into what each member adds and what is shared, and the
plan says how many members fit the target (``member_plan``).

The batch is the speech source's (``erclap.speech_source``): a config that reads audio with a speech path a cache
could stand for is also planned on cached speech features (``--mode=cache_speech``, then
``data.speech_features``), the variant asked for explicitly. The chips, their peaks and the topology names are in
``erclap.chips``.
"""

from __future__ import annotations

import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from erclap import (
    config_lib,
    fileio,
    members,
    models,
    optim,
    progress,
    sharding,
    speech_source,
    stages,
    state,
    step,
    tokenization,
    trainable,
)
from erclap.chips import CHIPS, GiB, chip_of_device, parse_topology
from erclap.schema import LABEL_NAMES
from erclap.speech_source import SpeechSource

__all__ = ["CHIPS", "abstract_batch", "cached_variant", "chip_of_device", "compile_train_step", "format_plan",
           "parse_topology", "plan_config", "plan_loss", "plan_step", "prepare_devices", "run_plan", "state_bytes",
           "with_host_device_count"]


def _backends_initialized() -> bool:
  # No public API says whether a backend exists yet; xla_bridge has said so under these names.
  from jax._src import xla_bridge  # private module, version-guarded below

  probe = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(probe()) if callable(probe) else bool(getattr(xla_bridge, "_backends", {}))


def with_host_device_count(xla_flags: str, n: int) -> str:
  """``xla_flags`` (an XLA_FLAGS value) with its simulated CPU device count set to ``n``, its other flags kept."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", xla_flags)
  return f"{flags} --xla_force_host_platform_device_count={n}".strip()


def prepare_devices(config) -> int:
  """Makes JAX simulate the topology's devices on the CPU; call before anything uses a JAX backend.

  Args:
    config: the run config; ``config.plan.topology`` ("" = the local devices, nothing to do).
  Returns:
    The number of devices the plan will use (0 for "": whatever the local backend has).
  Raises:
    RuntimeError: a backend is already running with another device count or platform.
  """
  topology = config.plan.topology
  if not topology:
    return 0
  _, n = parse_topology(topology)
  if _backends_initialized():
    devices = jax.devices()
    if len(devices) != n or devices[0].platform != "cpu":
      raise RuntimeError(
          f"plan.topology={topology!r} needs {n} simulated CPU devices, but JAX already runs on "
          f"{len(devices)} {devices[0].platform} device(s): call erclap.plan.prepare_devices before anything "
          f"uses JAX (run the plan in a process of its own)")
    return n
  os.environ["XLA_FLAGS"] = with_host_device_count(os.environ.get("XLA_FLAGS", ""), n)
  os.environ["JAX_PLATFORMS"] = "cpu"
  jax.config.update("jax_platforms", "cpu")  # jax read JAX_PLATFORMS when it was imported
  return n


# --------------------------------------------------------------------------- measuring


def _per_device_bytes(tree, shardings) -> int:
  sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
                       tree, shardings)
  return int(sum(jax.tree.leaves(sizes)))


def abstract_batch(config, mesh, params, source: SpeechSource) -> dict:
  """The global step batch of ``source`` as ShapeDtypeStructs sharded along the batch (nothing allocated); cached
  speech features as wide as ``params``' speech projection reads."""
  n = config.train.global_batch_size
  one = source.dummy_batch(config, 1, feature_width=models.speech_feature_width(params))
  return {k: jax.ShapeDtypeStruct((n,) + v.shape[1:], v.dtype, sharding=sharding.batch_sharding(mesh, v.ndim))
          for k, v in one.items() if k in source.step_keys}


def compiled_cost(compiled) -> dict:
  """``compiled.cost_analysis()`` as one dict (per device on an SPMD program)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost  # a list of one dict on older jax
  return dict(cost or {})


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
         for k in ("argument", "output", "alias", "temp", "generated_code")}
  # Donated state buffers are reused for the new state: aliased bytes are counted once.
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
  return out


def check_batch(config, mesh) -> None:
  """ValueError naming the key when the global / micro batch does not split over the mesh's batch shards."""
  shards = sharding.batch_size_divisor(mesh)
  n, micro = config.train.global_batch_size, config.train.micro_batch_size
  if n % shards:
    raise ValueError(f"config.train.global_batch_size={n} must be a multiple of the {shards} batch shards of "
                     f"mesh {dict(mesh.shape)}")
  if micro and micro < n and (micro % shards or n % micro):
    raise ValueError(f"config.train.micro_batch_size={micro} must divide the global batch {n} and be a "
                     f"multiple of the {shards} batch shards of mesh {dict(mesh.shape)}")


def compile_train_step(config, mesh, model, source: SpeechSource | None = None):
  """The real train step, jitted with the run's shardings and donation, compiled for abstract inputs.

  ``source``: where the batch's speech comes from (None: ``speech_source.of(config)``).

  Returns:
    (compiled, abstract state, state shardings, abstract batch, compile seconds); ``compiled(state, batch)``
    runs it on real arrays of those shapes and shardings.
  """
  check_batch(config, mesh)
  source = speech_source.of(config) if source is None else source
  optimizer = optim.make_optimizer(config)
  args, shardings = state.abstract_sharded_state(model, config, mesh, optimizer)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
  batch = abstract_batch(config, mesh, abstract.params, source)
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.jit_train_step(model, config, mesh, optimizer, shardings, source).lower(args, batch).compile()
  return compiled, abstract, shardings, batch, time.perf_counter() - start


def step_figures(config, mesh, compiled, abstract, shardings) -> dict:
  """Per-device bytes and FLOPs of a compiled train step (see ``plan_step``)."""
  flops = float(compiled_cost(compiled).get("flops", float("nan")))
  out = dict(_state_bytes(config, abstract, shardings), flops_per_device=flops, flops_per_step=flops * mesh.size,
             flops_per_example=flops * mesh.size / config.train.global_batch_size)
  out.update({f"{k}_bytes": v for k, v in _memory(compiled).items()})
  return out


def plan_step(config, mesh, model, source: SpeechSource | None = None) -> dict:
  """Per-device memory and FLOPs of the compiled train step (abstract inputs: nothing is allocated).

  Args:
    config: the run config. mesh: the device mesh (as many devices as the target has chips).
    model: the model the run trains (``runtime.build_model``).
    source: where the batch's speech comes from (None: ``speech_source.of(config)``).
  Returns:
    dict of per-device bytes (params, opt_state, grads, argument, output, alias, temp, total),
    ``flops_per_device``, ``flops_per_step`` (global), ``flops_per_example`` and ``compile_s``.
  """
  compiled, abstract, shardings, _, seconds = compile_train_step(config, mesh, model, source)
  return dict(step_figures(config, mesh, compiled, abstract, shardings), compile_s=seconds)


def _state_bytes(config, abstract, shardings) -> dict:
  trained = trainable.of(config).trained(abstract.params)  # gradients reach these only (the step's frozen view)
  return dict(params_bytes=_per_device_bytes(abstract.params, shardings.params),
              opt_state_bytes=_per_device_bytes(abstract.opt_state, shardings.opt_state),
              grads_bytes=_per_device_bytes(trained, {k: shardings.params[k] for k in trained}),
              param_count=int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))))


def state_bytes(config, mesh, model) -> dict:
  """Per-device parameter, optimizer-state and gradient bytes (and the parameter count), without compiling."""
  abstract, shardings = state.abstract_state_and_shardings(model, config, mesh, optim.make_optimizer(config))
  return _state_bytes(config, abstract, shardings)


def plan_loss(config, mesh) -> dict:
  """Per-device FLOPs and temporary bytes of the stage's loss + gradient alone, on the (N, width) outputs it reads
  (``Stage.loss_output_widths``: the cross-modal stage's embeddings, stage 1's predicted attributes) and the
  scalar parameters it reads (``Stage.loss_params``: the log temperature)."""
  stage, n = stages.of(config), config.train.global_batch_size
  rows = lambda *shape, dtype=jnp.float32: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))

  def loss(outputs, params, batch):
    return stage.loss(config, mesh, params, outputs, batch)[0]

  outputs = {key: rows(n, width) for key, width in stage.loss_output_widths(config).items()}
  params = {name: jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
            for name in stage.loss_params}
  batch = dict(labels=rows(n, len(LABEL_NAMES)), class_id=rows(n, dtype=jnp.int32))
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(outputs, params, batch).compile()
  return dict(flops_per_device=float(compiled_cost(compiled).get("flops", float("nan"))),
              temp_bytes=_memory(compiled)["temp"])


# --------------------------------------------------------------------------- verdict and knobs


def _micro_knob(config, mesh, step_plan, limit, model_act) -> dict | None:
  """Gradient caching: the towers' activations scale with the micro-batch; embeddings and a gradient
  accumulator are added. The largest micro-batch (a power-of-two fraction) that fits, else the smallest."""
  n, shards = config.train.global_batch_size, sharding.batch_size_divisor(mesh)
  current = config.train.micro_batch_size if 0 < config.train.micro_batch_size < n else n
  extra = 0 if current < n else step_plan["grads_bytes"]
  best = None
  m = current // 2
  while m >= shards and m % shards == 0 and n % m == 0:
    total = step_plan["total_bytes"] - model_act * (1 - m / current) + extra
    best = dict(knob="train.micro_batch_size", value=m, total_bytes=int(total),
                note="one extra forward pass per step (~+1/3 FLOPs)" if current == n else "")
    if total <= limit:
      break
    m //= 2
  return best


def knobs(config, mesh, step_plan, loss_plan, limit) -> list[dict]:
  """Config changes that lower the per-device total, each with an estimated total where cheap to estimate.

  ``total_bytes`` None: not estimated (recompile with the override to measure it)."""
  loss_temp = loss_plan["temp_bytes"] if loss_plan else 0
  model_act = max(step_plan["temp_bytes"] - step_plan["grads_bytes"] - loss_temp, 0)
  total, out = step_plan["total_bytes"], []
  micro = _micro_knob(config, mesh, step_plan, limit, model_act)
  if micro:
    out.append(micro)
  if not config.model.remat:
    out.append(dict(knob="model.remat", value=True, total_bytes=None,
                    note="keeps only each layer's input for the backward pass; ~+1/3 FLOPs"))
  data = mesh.shape.get("data", 1)
  if data > 1 and "fsdp" in mesh.axis_names:
    fsdp = mesh.shape["fsdp"]
    state_bytes = step_plan["params_bytes"] + step_plan["opt_state_bytes"] + step_plan["grads_bytes"]
    shape = tuple(1 if a == "data" else (data * fsdp if a == "fsdp" else mesh.shape[a]) for a in mesh.axis_names)
    out.append(dict(knob="mesh.shape", value=shape, total_bytes=int(total - state_bytes * (1 - 1 / data)),
                    note="parameters, gradients and optimizer state split over the data devices too "
                         "(adds parameter all-gathers)"))
  n_local = config.train.global_batch_size // sharding.batch_size_divisor(mesh)
  block = config.loss_options.row_block or n_local
  if "row_block" in stages.of(config).loss_option_names(config) and block > 512 and n_local > 512:
    out.append(dict(knob="loss_options.row_block", value=512, total_bytes=int(total - loss_temp * (1 - 512 / block)),
                    note="the loss's (rows x N) matrices are built 512 rows at a time"))
  if config.model.dtype == "float32":
    out.append(dict(knob="model.dtype", value="bfloat16", total_bytes=int(total - model_act / 2),
                    note="activations in bfloat16 (parameters stay float32)"))
  return out


def with_member_count(config, n: int):
  """``config`` with ``n`` members: each varied member key's values cut to, or repeated up to, ``n`` (what the
  program holds per member does not depend on the values)."""
  overrides = {}
  for key in members.varied(config):
    values = tuple(config.members[key.name])
    overrides[f"members.{key.name}"] = tuple(values[i % len(values)] for i in range(n))
  plain = config.as_configdict() if hasattr(config, "as_configdict") else config
  return config_lib.apply_overrides(plain, overrides, f"{n} members")


def as_planned(config):
  """``config`` with its members computed all at once (``members.at_once`` -1 made 0), as its step runs on a TPU /
  GPU: the plan compiles on CPU devices, where -1 maps the members one after another (one member's activations),
  and ``member_plan``'s count of what each member adds assumes all at once. A count that is set stays.
  """
  if not members.count(config) or config.members.at_once != -1:
    return config
  plain = config.as_configdict() if hasattr(config, "as_configdict") else config
  out = config_lib.apply_overrides(plain, {"members.at_once": 0}, "members all at once")
  return type(config)(out) if hasattr(config, "as_configdict") else out


def member_plan(config, mesh, model, step_plan: dict, limit: float | None,
                source: SpeechSource | None = None) -> dict:
  """What each member of a program with members adds to the per-device total, what is shared, and how many members
  fit ``limit`` bytes per device: the step compiled again with another member count (K + 1 ... or 1), the total
  taken as linear in the count.

  Returns:
    ``dict(members=K, per_member_bytes, shared_bytes, fit)``; ``fit`` None without a limit.
  """
  k = members.count(config)
  other = 1 if k > 1 else 2
  other_plan = plan_step(with_member_count(config, other), mesh, model, source)
  per_member = max((step_plan["total_bytes"] - other_plan["total_bytes"]) / (k - other), 1.0)
  shared = max(step_plan["total_bytes"] - k * per_member, 0.0)
  fit = None if limit is None else max(int((limit - shared) // per_member), 0)
  return dict(members=k, per_member_bytes=int(per_member), shared_bytes=int(shared), fit=fit)


def plan_config(config, mesh, model, chip_key: str | None, step_plan: dict | None = None,
                source: SpeechSource | None = None) -> dict:
  """The whole plan of ``config`` on ``mesh``: memory, FLOPs, the loss's share, speed and the verdict.

  Args:
    config: the run config (``config.plan`` gives utilisation and headroom).
    mesh: the mesh, with one device per chip of the target. model: the model the run trains.
    chip_key: a key of CHIPS (None: no chip figures; memory and FLOPs only).
    step_plan: ``plan_step``'s figures when the caller has compiled the step already.
    source: where the batch's speech comes from (None: ``speech_source.of(config)``).
  Returns:
    A JSON-serialisable dict (see ``format_plan``).
  """
  step_plan = plan_step(config, mesh, model, source) if step_plan is None else step_plan
  loss_plan = plan_loss(config, mesh)
  n = config.train.global_batch_size
  result = dict(chip=None, devices=int(mesh.size), mesh={k: int(v) for k, v in mesh.shape.items()},
                global_batch=n, micro_batch=int(config.train.micro_batch_size),
                loss=stages.of(config).loss_label(config),
                utilization=float(config.plan.utilization), hbm_headroom=float(config.plan.hbm_headroom),
                step=step_plan, loss_plan=loss_plan,
                # a program with members runs the loss once per member
                loss_flops_share=(max(members.count(config), 1) * loss_plan["flops_per_device"]
                                  / step_plan["flops_per_device"] if loss_plan and step_plan["flops_per_device"] > 0
                                  else None))
  limit = config.plan.hbm_headroom * CHIPS[chip_key].hbm_bytes if chip_key is not None else None
  if members.count(config):
    result["members"] = member_plan(config, mesh, model, step_plan, limit, source)
  if chip_key is None:
    return dict(result, verdict="UNKNOWN (no chip: set plan.topology)", knobs=[])
  chip = CHIPS[chip_key]
  step_s = step_plan["flops_per_device"] / (chip.bf16_flops * config.plan.utilization)
  fits = step_plan["total_bytes"] <= limit
  return dict(result, chip=chip.name, chip_bf16_flops=chip.bf16_flops, hbm_bytes=chip.hbm_bytes,
              limit_bytes=int(limit), step_time_s=step_s, examples_per_s=n / step_s if step_s > 0 else None,
              verdict="FITS" if fits else "DOES NOT FIT",
              knobs=[] if fits else knobs(config, mesh, step_plan, loss_plan, limit))


def format_bytes(x) -> str:
  if x is None:
    return "-"
  return f"{x / GiB:.2f} GiB" if abs(x) >= GiB / 10 else f"{x / 2 ** 20:.1f} MiB"


def format_plan(result: dict, title: str = "plan") -> str:
  """The plan as a text table (what ``run_plan`` prints)."""
  s, lp = result["step"], result["loss_plan"]
  lines = [f"== {title}: {result.get('topology') or 'local devices'} ({result['chip'] or 'no chip'}), "
           f"{result['devices']} devices, mesh {result['mesh']}, global batch {result['global_batch']}"
           + (f", micro-batch {result['micro_batch']}" if result["micro_batch"] else ""),
           f"  parameters          {s['param_count'] / 1e6:.1f} M",
           "  per device:"]
  for name, key in (("parameters", "params"), ("optimizer state", "opt_state"), ("gradients (in temp)", "grads"),
                    ("arguments", "argument"), ("outputs", "output"), ("aliased (donated)", "alias"),
                    ("activations / temp", "temp"), ("total", "total")):
    lines.append(f"    {name:<20}{format_bytes(s[f'{key}_bytes']):>14}")
  lines.append(f"  FLOPs per step      {s['flops_per_step']:.4g} ({s['flops_per_device']:.4g} per device; "
               f"cost_analysis is per device on the SPMD program)")
  lines.append(f"  FLOPs per example   {s['flops_per_example'] / 1e9:.1f} GFLOP")
  if result.get("members"):
    mp = result["members"]
    fit = "" if mp["fit"] is None else f"; {mp['fit']} members fit {format_bytes(result.get('limit_bytes'))}"
    lines.append(f"  members             {mp['members']} (config.members): each adds "
                 f"{format_bytes(mp['per_member_bytes'])} per device, {format_bytes(mp['shared_bytes'])} shared{fit}")
  if lp:
    lines.append(f"  {result['loss']} loss+grad    {lp['flops_per_device']:.4g} FLOPs/device = "
                 f"{100 * result['loss_flops_share']:.3g}% of the step (sorts are not FLOPs), "
                 f"temp {format_bytes(lp['temp_bytes'])}")
  if result["chip"]:
    lines.append(f"  at {100 * result['utilization']:.0f}% of {result['chip_bf16_flops'] / 1e12:.0f} TFLOP/s bf16: "
                 f"step {result['step_time_s'] * 1e3:.3g} ms, {result['examples_per_s']:.0f} examples/s")
    lines.append(f"  verdict: {result['verdict']} ({format_bytes(s['total_bytes'])} of "
                 f"{format_bytes(result['limit_bytes'])} = {100 * result['hbm_headroom']:.0f}% of "
                 f"{format_bytes(result['hbm_bytes'])} HBM)")
  else:
    lines.append(f"  verdict: {result['verdict']}")
  for k in result["knobs"]:
    est = f"-> ~{format_bytes(k['total_bytes'])}" if k["total_bytes"] is not None else "-> not estimated (recompile)"
    value = str(k["value"]).replace(" ", "")
    lines.append(f"    knob --config.{k['knob']}={value}  {est}  {k['note']}".rstrip())
  if "compile_s" in s:
    lines.append(f"  (step compiled in {s['compile_s']:.0f} s)")
  return "\n".join(lines)


# --------------------------------------------------------------------------- the mode


def vocab_size(config) -> tuple[int | None, str]:
  """The text vocabulary the model is built with, and where it came from.

  The configured tokenizer's when it can be built here; else the text preset's (a tokenizer directory on the
  training machine only: the embedding table then has the preset's size, e.g. RoBERTa's 50265)."""
  if not stages.of(config).has_text_tower:
    return None, "no text tower"
  try:
    tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens,
                                             descriptions=config.data.descriptions)
    return tokenizer.vocab_size, "tokenizer"
  except (OSError, ValueError, ImportError) as e:
    preset = models.text_preset(config.model.size, config.model.text_arch)
    return preset.vocab_size, f"{config.model.text_arch} preset ({type(e).__name__}: tokenizer not available)"


def cached_variant(config) -> bool:
  """Whether the plan of ``config`` also plans the step on cached speech features: it reads audio, and a cache
  could stand for its speech path (``trainable.of(config).cached``)."""
  return speech_source.of(config) is speech_source.AUDIO and bool(trainable.of(config).cached)


def target(config) -> tuple[str | None, str]:
  """(CHIPS key or None, a description) of what the plan is for: plan.topology, else the local devices."""
  if config.plan.topology:
    key, n = parse_topology(config.plan.topology)
    if jax.device_count() != n:
      raise RuntimeError(f"plan.topology={config.plan.topology!r} needs {n} devices but JAX has "
                         f"{jax.device_count()}: call erclap.plan.prepare_devices(config) before anything uses JAX")
    return key, config.plan.topology
  device = jax.devices()[0]
  return chip_of_device(device), f"local {jax.device_count()} x {device.device_kind}"


def run_plan(config, workdir: str) -> dict:
  """``--mode=plan``: prints the plan of ``config`` (and of its cached-feature variant, ``cached_variant``) and
  writes ``<workdir>/plan.json``.

  Args:
    config: resolved for ``plan`` (``erclap.resolve``); ``config.plan`` names the topology, assumed utilisation and
      HBM headroom.
    workdir: where plan.json goes (a remote workdir gets none: the printed table is the plan).
  Returns:
    The plan dict (``plan_config``'s, with ``topology``, ``vocab_size`` and ``variants``).
  """
  # erclap.runtime builds the mesh and model from the config; it also holds the training set-up, which reaches
  # the data stack (grain / TFDS): imported here so that the measuring functions above need jax/flax/optax only.
  from erclap import resolve, runtime

  resolve.require(config, "plan")
  chip_key, where = target(config)
  config = as_planned(config)
  mesh = runtime.make_mesh(config)
  vocab, vocab_from = vocab_size(config)
  model = runtime.build_model(config, vocab_size=vocab)
  result = plan_config(config, mesh, model, chip_key)
  result.update(topology=where, vocab_size=vocab, vocab_from=vocab_from, variants={})
  progress.print_line(format_plan(result, f"plan (text vocabulary {vocab}: {vocab_from})"))
  if cached_variant(config):
    cached = plan_config(config, mesh, model, chip_key, source=speech_source.CACHED)
    cached.update(topology=where)
    result["variants"]["speech_features"] = cached
    progress.print_line(format_plan(cached, "plan on cached speech features (--mode=cache_speech, then "
                                            "data.speech_features)"))
  if "://" in workdir:
    progress.print_line(f"plan.json not written: {workdir} is remote (the table above is the plan)")
  else:
    os.makedirs(workdir, exist_ok=True)
    fileio.write_json(os.path.join(workdir, "plan.json"), result)
  return result
