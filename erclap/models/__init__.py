"""Flax speech (wav2vec2 / HuBERT / WavLM) and text (BERT / RoBERTa) encoders and the CLAP / SER models."""

from erclap.models.arch import (
    SIZES,
    SPEECH_TYPES,
    TEXT_ARCHS,
    SpeechArch,
    TextArch,
    arch_from_hf_config,
    hf_arch,
    is_hf_model_dir,
    speech_preset,
    text_preset,
)
from erclap.models.clap import (
    DTYPES,
    LOG_TEMPERATURE,
    SER_HEAD,
    SPEECH_PATH,
    SPEECH_POOL,
    SPEECH_PROJ,
    SPEECH_REPRESENTATIONS,
    SPEECH_TOWER,
    TEXT_POOLINGS,
    TEXT_PROJ,
    TEXT_TOWER,
    CLAPModel,
    ProjectionHead,
    SERModel,
    build_clap_model,
    build_ser_model,
    l2_normalize,
    speech_arch_for,
    speech_feature_width,
    text_arch_for,
)
from erclap.models.layers import masked_mean
from erclap.models.pooling import (
    POOLINGS,
    TRAINABLE_POOLINGS,
    AttentiveStatisticsPooling,
    MeanPooling,
    make_pooling,
    pooled_size,
    standardize_waveform,
)
from erclap.models.ser_head import SERHead
from erclap.models.speech import SpeechEncoder, frame_lengths, normalize_waveform
from erclap.models.text import TextEncoder, padded_vocab_size

__all__ = [
    "speech_feature_width",
    "DTYPES", "LOG_TEMPERATURE", "SER_HEAD", "SPEECH_PATH", "SPEECH_POOL", "SPEECH_PROJ", "SPEECH_TOWER",
    "TEXT_POOLINGS", "TEXT_PROJ", "TEXT_TOWER", "TRAINABLE_POOLINGS", "SIZES", "SPEECH_TYPES", "TEXT_ARCHS",
    "POOLINGS", "SPEECH_REPRESENTATIONS", "AttentiveStatisticsPooling", "MeanPooling", "SERHead",
    "make_pooling", "pooled_size", "standardize_waveform",
    "CLAPModel", "ProjectionHead", "SERModel", "SpeechArch", "SpeechEncoder", "TextArch", "TextEncoder",
    "arch_from_hf_config", "build_clap_model", "build_ser_model", "frame_lengths", "hf_arch",
    "is_hf_model_dir", "l2_normalize", "masked_mean", "normalize_waveform", "padded_vocab_size",
    "speech_arch_for", "speech_preset",
    "text_arch_for", "text_preset",
]
