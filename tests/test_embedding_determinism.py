"""An embedding does not depend on the batch it was computed in: a clip alone, in a batch, padded beside a longer
clip, past a batch boundary; a description alone and in batches of other shapes. Through the inference API
(``ERCLAP``) and the command line (``python -m erclap.embed``), on the suite's trained workdir (read only)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from scipy.io import wavfile

from erclap import embed
from erclap.data import audio as audio_io
from erclap.inference import ERCLAP

# Reads the suite's trained workdir (a training run); one worker builds the module's model once.
pytestmark = pytest.mark.slow

ATOL = 1e-5


def _noise(seconds: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (0.3 * rng.standard_normal(int(seconds * 16000))).clip(-1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def model(trained_workdir):
  return ERCLAP.load(trained_workdir, batch_size=8)  # 8 windows a call: the 13 clips below span two calls


@pytest.fixture(scope="module")
def clips(model):
  window = model.window_seconds
  return dict(short=_noise(0.6 * window, seed=1), long=_noise(2.6 * window, seed=2),  # 3 windows, last one partial
              others=[_noise(s * window, seed=10 + i) for i, s in enumerate((0.3, 0.9, 1.0, 0.5, 1.7, 0.2))])


def test_a_clip_alone_in_a_batch_and_beside_a_longer_clip(model, clips):
  short, long, others = clips["short"], clips["long"], clips["others"]
  alone = model.embed_audio([short])[0]
  long_alone = model.embed_audio([long])[0]
  in_batch = model.embed_audio([*others[:3], short, *others[3:]])[3]
  beside_long = model.embed_audio([long, short])
  past_boundary = model.embed_audio([*others, *others, short, long])  # short is window 13: the second call
  np.testing.assert_allclose(in_batch, alone, atol=ATOL)
  np.testing.assert_allclose(beside_long[1], alone, atol=ATOL)
  np.testing.assert_allclose(beside_long[0], long_alone, atol=ATOL)
  np.testing.assert_allclose(past_boundary[-2], alone, atol=ATOL)
  np.testing.assert_allclose(past_boundary[-1], long_alone, atol=ATOL)
  assert np.abs(alone - long_alone).max() > 100 * ATOL  # different clips: the comparison can tell them apart


def test_a_description_alone_and_in_batches(model):
  text = "A calm voice with a very happy tone, sounding somewhat unsure."
  alone = model.embed_text([text])[0]
  small = model.embed_text(["An excited voice.", text, "a sad, quiet and very unsure voice, close to tears"])[1]
  large = model.embed_text([f"a voice number {i}" for i in range(20)] + [text])[-1]  # another batch shape
  np.testing.assert_allclose(small, alone, atol=ATOL)
  np.testing.assert_allclose(large, alone, atol=ATOL)
  assert np.abs(alone - model.embed_text(["An excited voice."])[0]).max() > 100 * ATOL


def test_the_command_line_embeds_a_file_as_the_api_embeds_it_alone(model, clips, trained_workdir, tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  named = {"a_short.wav": clips["short"], "b_long.wav": clips["long"],
           **{f"c_other{i}.wav": x for i, x in enumerate(clips["others"])}}
  for name, x in named.items():
    wavfile.write(folder / name, 16000, audio_io.to_int16(x))
  assert embed.main([f"--model={trained_workdir}", f"--audio={folder}", f"--out={tmp_path / 'all'}",
                     "--batch_size=8"]) == 0
  assert embed.main([f"--model={trained_workdir}", f"--audio={folder / 'a_short.wav'}",
                     f"--out={tmp_path / 'one'}", "--batch_size=8"]) == 0
  frames = {}
  for out in ("all", "one"):
    shards = sorted(p for p in os.listdir(tmp_path / out) if p.startswith("shard-"))
    frame = pd.concat([pd.read_parquet(tmp_path / out / p) for p in shards]).set_index("path")
    frames[out] = {os.path.basename(p): np.asarray(e) for p, e in frame["speech_embedding"].items()}
  assert len(frames["all"]) == len(named) and list(frames["one"]) == ["a_short.wav"]
  np.testing.assert_allclose(frames["all"]["a_short.wav"], frames["one"]["a_short.wav"], atol=ATOL)
  for name in ("a_short.wav", "b_long.wav", "c_other4.wav"):  # the files read back: 16-bit samples
    alone = model.embed_audio([str(folder / name)])[0]
    np.testing.assert_allclose(frames["all"][name], alone, atol=ATOL)
