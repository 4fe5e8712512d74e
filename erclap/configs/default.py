"""Base configuration: every key any part of ERCLAP reads is declared here (others are errors).

Other config files start from ``default.get_config()`` and change values; command-line overrides
(``--config.train.global_batch_size=512``) can only touch keys that exist here. The allowed values of a key with
a fixed set of them are the registries the comments name (``erclap/validation.py`` checks against them).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stage = "clap"       # "clap": cross-modal stage; "ser": stage-1 speech-emotion pre-training (erclap.stages)
  c.loss = "rnc"         # "rnc" | "infonce" | "supcon" | any losses.register-ed name (clap stage)
  _loss_options(c)
  _data(c)
  _model(c)
  _train(c)
  _checkpoint(c)
  _eval_and_export(c)
  _devices(c)
  _plan(c)
  _recipe(c)
  _members(c)
  return c


def _loss_options(c: ml_collections.ConfigDict) -> None:
  """config.loss_options: the contrastive and SER losses."""
  c.loss_options = ml_collections.ConfigDict()
  c.loss_options.similarity = "cosine"          # "cosine" | "neg_l2"
  c.loss_options.label_distance = "l1"          # "l1" | "l2"
  c.loss_options.rank_labels = ("arousal", "valence")  # label columns the RNC distance uses
  # RNC: one weight >= 0 per rank_labels entry (() = equal). With rank_terms="combined" they weigh the columns in
  # the label distance (sum_l w_l |y_il - y_jl|, or w_l (y_il - y_jl)^2 with label_distance="l2"), so that a
  # stronger attribute need not dominate the order; with "per_label" the loss is one RNC term per column (each
  # ordered by that attribute alone), averaged with these weights (w_l / sum w).
  c.loss_options.rank_label_weights = ()
  c.loss_options.rank_terms = "combined"  # "combined" | "per_label"
  c.loss_options.row_block = 0                  # 0 = unblocked; else rows per rematerialised block
  c.loss_options.supcon_bins = 3                # supcon without categorical labels: bins per attribute
  # False: each loss averages its speech->text and text->speech directions (anchors of one modality against
  # the N items of the other). True: the joint 2N form of the loss, as the single-set originals (Rank-N-Contrast,
  # SimCLR's NT-Xent, SupCon) define it on both modalities fed together: the speech and text rows form one set
  # of 2N anchors, each against the other 2N - 1 rows of both modalities (itself excluded); same-modality pairs
  # then take part too.
  c.loss_options.joint = False
  # With joint=True, the weight lambda >= 0 of the same-modality rows, as pairs and in the denominators (every
  # loss): 1 = the joint 2N form above, 0 = the two-direction form (which joint=False computes over N columns
  # instead of 2N); in between, the same-modality terms count lambda times a cross-modal one.
  c.loss_options.same_modality_weight = 1.0
  # SER stage (stage 1)
  c.loss_options.ccc_weight = 1.0
  c.loss_options.rank_weight = 1.0
  c.loss_options.rank_margin = 0.0
  c.loss_options.rank_scale = 1.0


def _data(c: ml_collections.ConfigDict) -> None:
  """config.data: the corpus, crops and descriptions."""
  c.data = ml_collections.ConfigDict()
  c.data.name = "embedded"        # "embedded" | "espeak" | "msp_podcast" | "iemocap" (erclap.data.CORPORA)
  # The data order: the training shuffle, the crops and the descriptions drawn. -1 = config.seed (so one seed
  # decides a run); a run with members (config.members) reads one data order for all of them.
  c.data.seed = -1
  c.data.data_dir = ""            # TFDS data dir; "" = $ERCLAP_DATA_DIR or ~/tensorflow_datasets
  c.data.manual_dir = ""          # where the licensed corpora's audio lives (msp_podcast, iemocap)
  # A built licensed corpus records its source (<version dir>/erclap_source.json). When data.manual_dir is set
  # and differs from that record (files added / removed / changed, label file content), the run stops and
  # says what differs; True rebuilds it from data.manual_dir instead (the old build is replaced only once the
  # new one is complete).
  c.data.rebuild = False
  c.data.sample_rate = 16000
  c.data.max_seconds = 4.0        # random crop / pad length for training, in seconds
  c.data.eval_max_seconds = 0.0   # 0 = same as max_seconds (centre crop)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.test_split = "test"
  c.data.descriptions = "templates"   # "templates" | path to a JSONL of LLM-written descriptions
  c.data.descriptions_per_example = 8 # template variants drawn from per epoch
  c.data.max_text_tokens = 32
  c.data.worker_count = 0             # grain worker processes (0 = in-process)
  c.data.prefetch_buffer_size = 2
  c.data.iemocap_test_session = 5     # leave-one-session-out split for IEMOCAP
  c.data.unreadable_audio_tolerance = 0.0  # fraction of unreadable files tolerated (counted, skipped)
  # Speech-feature cache (erclap/speech_cache/): "" = off (the speech tower runs every step); a directory
  # written by --mode=cache_speech = train / evaluate / export on its cached frozen speech representation (one
  # fixed crop per clip: no random training crops). Needs model.freeze_speech=True. --mode=cache_speech writes
  # to this directory, or to <workdir>/speech_features when it is "".
  c.data.speech_features = ""
  c.data.embedded = ml_collections.ConfigDict()
  c.data.embedded.num_train = 4000
  c.data.embedded.num_validation = 500
  c.data.embedded.num_test = 1000
  c.data.embedded.num_speakers = 8
  c.data.embedded.min_seconds = 1.0
  c.data.embedded.max_seconds = 4.0
  c.data.embedded.label_noise = 0.3
  c.data.embedded.seed = 1234
  # The espeak corpus (erclap/data/espeak.py, docs/corpora.md): English sentences from espeak-ng voices, arousal
  # carried by strong cues, valence by weak ones; building it needs the espeak-ng program (Debian package).
  c.data.espeak = ml_collections.ConfigDict()
  c.data.espeak.num_train = 2400
  c.data.espeak.num_validation = 300
  c.data.espeak.num_test = 600
  c.data.espeak.num_speakers = 30       # accent x voice-variant pairs (at most 224)
  c.data.espeak.held_out_speakers = True  # validation / test speakers are never train speakers (70/10/20 %)
  c.data.espeak.arousal_cue = 1.0       # strength of each attribute's cues (0 = none; 1 = as documented)
  c.data.espeak.valence_cue = 1.0
  c.data.espeak.dominance_cue = 1.0
  c.data.espeak.label_noise = 0.3       # sd of the Gaussian noise between the latent values and the labels
  c.data.espeak.seed = 4321


def _model(c: ml_collections.ConfigDict) -> None:
  """config.model: towers, pooling, heads and their initialisation."""
  c.model = ml_collections.ConfigDict()
  c.model.size = "tiny"               # "tiny" | "base" | "large"
  c.model.joint_dim = 512
  c.model.speech_arch = "wavlm"       # "wav2vec2" | "hubert" | "wavlm"
  c.model.text_arch = "bert"          # "bert" | "roberta" | "distilroberta"
  c.model.speech_init = ""            # "" (random) | HF model dir | ERCLAP workdir (SER stage-1 run)
  c.model.text_init = ""              # "" (random) | HF model dir
  c.model.tokenizer = "descriptions"  # "descriptions" (word-level over the template vocabulary) | HF dir
  c.model.freeze_speech = False       # the paper freezes its (pre-trained) speech model
  # With freeze_speech=True: freeze the speech tower only, and train the pooling (and the SER head, when
  # speech_representation reads it) on its output. The speech path then trains, so it runs on audio every step
  # (no speech-feature cache); the tower's backward pass and optimizer moments are dropped. erclap/trainable.py.
  c.model.train_speech_pooling = False
  c.model.freeze_text = False
  c.model.speech_pooling = "mean"     # "mean" | "attentive_stats" ([mean || std], attention-weighted) over valid frames
  c.model.speech_input_mean = 0.0     # speech_input_std > 0: the waveform is standardised as (x - mean) /
  c.model.speech_input_std = 0.0      #   (std + 1e-6) with corpus statistics (Odyssey SER models); 0 = off
  # What the CLAP speech projection reads: "pooled" (tower + pooling) | "ser_hidden" | "ser_output" (SER head)
  c.model.speech_representation = "pooled"
  c.model.ser_head_layers = 1         # SER head: Dense -> LayerNorm -> ReLU -> Dropout blocks, then a Dense
  c.model.ser_head_hidden = 0         # their width; 0 = the speech tower's hidden size
  c.model.text_pooling = "cls"        # "cls" | "mean"
  c.model.projection_hidden = (512,)  # hidden widths of the projection MLPs ((): linear)
  c.model.dropout = 0.0
  c.model.dtype = "float32"           # compute dtype ("bfloat16" on TPU); params stay float32
  c.model.remat = False
  c.model.num_attributes = 3          # SER heads: arousal, valence, dominance


def _train(c: ml_collections.ConfigDict) -> None:
  """config.train: steps, batches, optimizer and temperature."""
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 10_000
  c.train.global_batch_size = 256
  c.train.micro_batch_size = 0        # > 0: gradient caching with this many examples per micro-batch
  c.train.learning_rate = 1e-4
  c.train.speech_lr_multiplier = 1.0
  c.train.text_lr_multiplier = 1.0
  c.train.warmup_steps = 500
  c.train.weight_decay = 0.01
  c.train.grad_clip_norm = 1.0
  c.train.temperature_init = 0.07
  c.train.learn_temperature = True
  c.train.log_every_steps = 50
  c.train.profile_steps = ()          # e.g. (100, 110): write a profiler trace for those steps


def _checkpoint(c: ml_collections.ConfigDict) -> None:
  """config.checkpoint: how often, how many, which is best."""
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.best_metric = ""       # e.g. "aoc_voc_mean": also keep the best checkpoint by this metric
  c.checkpoint.best_mode = "max"
  c.checkpoint.async_save = True


def _eval_and_export(c: ml_collections.ConfigDict) -> None:
  """config.eval and config.export."""
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 1000
  c.eval.batch_size = 64
  c.eval.max_examples = 0             # 0 = whole split
  c.eval.probe_train_examples = 2000  # train-split clips the ridge probe is fitted on
  c.eval.retrieval_levels = 5         # retrieval Kendall tau: K levels
  c.eval.retrieval_draws = 200        #                        M draws
  # The paper's top-1. 5 (each description's value = the mean of its 5 nearest clips) is the steadier variant:
  # 1.2-4.5x less spread across test sets (benchmarks/README.md#aoc_voc_estimatorpy--what-moves-the-papers-aoc--voc).
  c.eval.retrieval_top_k = 1
  # Resamples of the 95 % bootstrap interval of AOC / VOC (aoc_ci95_low/high, voc_ci95_low/high: test clips and
  # draws resampled; docs/metrics.md); 0 = no interval. 1000 cost about 0.03 s per attribute on 1000 test clips.
  c.eval.retrieval_bootstrap = 1000
  c.eval.prompt_wordings = 8          # template wordings per level averaged into each zero-shot level prompt (<= 36)
  c.export = ml_collections.ConfigDict()
  c.export.splits = ("test",)
  c.export.step = -1                  # -1 = latest checkpoint
  # A run with members (config.members): -1 = --mode=export / eval write every member's outputs under
  # <workdir>/members/<k>/; k = member k's alone. --mode=export_model writes one member's model: k is required
  # when the run has more than one.
  c.export.member = -1
  # --mode=export_model: one self-contained model directory (erclap.model_export), loadable with ERCLAP.load
  c.export.model_dir = ""             # "" = <workdir>/model (a local path)
  c.export.saved_model = True         # also a TF SavedModel in <model_dir>/saved_model (seconds; clap stage)


def _devices(c: ml_collections.ConfigDict) -> None:
  """config.mesh and config.distributed."""
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)
  c.mesh.axes = ("data", "fsdp", "tensor")
  c.mesh.logical_axis_rules = ()      # overrides of erclap.sharding.LOGICAL_AXIS_RULES

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # "" = auto (TPU/SLURM env) or single process
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.local_device_ids = ()


def _plan(c: ml_collections.ConfigDict) -> None:
  """config.plan (--mode=plan: will it fit, how fast)."""
  c.plan = ml_collections.ConfigDict()
  c.plan.topology = ""          # "" = the local devices; "v4-8", "v4-32", "v5e-8", "v5p-8", "h100-8", ...
  c.plan.utilization = 0.4      # assumed model FLOP utilisation for the step-time estimate
  c.plan.hbm_headroom = 0.9     # fits when the per-device total is <= this fraction of the chip's HBM


def _recipe(c: ml_collections.ConfigDict) -> None:
  """config.recipe: a cross-modal run that first trains its own frozen speech model (erclap.recipe)."""
  c.recipe = ml_collections.ConfigDict()
  # "" = one stage (the run as configured). A config name ("ser_pretrain:demo", erclap.configs.get): the
  # training modes first train that stage-1 (SER) config in <workdir>/stage1, then cache its frozen speech
  # representation in <workdir>/speech_features (--mode=cache_speech), then train this config on the cache;
  # model.speech_init, model.freeze_speech and data.speech_features are set by the recipe.
  c.recipe.stage1 = ""
  c.recipe.stage1_steps = 0   # > 0: stage 1 trains this many steps instead of its config's
  # Stage 1's seed (its initialisation and data order). The cross-modal stage's own `seed` leaves stage 1 alone:
  # runs that differ only in `seed` read one stage 1 and one speech cache.
  c.recipe.stage1_seed = 0


def _members(c: ml_collections.ConfigDict) -> None:
  """config.members: K runs trained together in one program (erclap.members, docs/configs.md#members).

  Each key is empty (not varied) or holds one value per member, every non-empty key the same number K. Member k
  is the run of this config with its values put in place of the keys they stand for (``erclap.members.MEMBER_KEYS``);
  all members read one data order (config.data.seed) and one batch per step, and each is a run of its own in
  <workdir>/members/<k>/. What changes shapes or the program (batch size, towers, loss, mesh) is not a member key:
  sweep it as separate runs.
  """
  c.members = ml_collections.ConfigDict()
  c.members.seeds = ()                  # config.seed: parameter init, dropout, evaluation draws
  c.members.learning_rates = ()         # config.train.learning_rate (the schedule's peak)
  c.members.temperatures = ()           # config.train.temperature_init
  c.members.learn_temperature = ()      # config.train.learn_temperature (bools)
  c.members.same_modality_weights = ()  # config.loss_options.same_modality_weight (joint form's lambda)
  c.members.rank_label_weights = ()     # config.loss_options.rank_label_weights: one tuple per member
  # How many members the train step computes at once: 0 = all (jax.vmap: batched ops, for TPU / GPU); n = n at a
  # time, the next n after them (jax.lax.map; 1 on XLA:CPU, whose batched matmuls are slower than one after
  # another); -1 = by the platform (0 on TPU / GPU or with the member axis over a mesh axis, 1 on CPU).
  c.members.at_once = -1
