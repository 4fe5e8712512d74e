"""The headline metrics as the paper names them, one line each on what they mean, and the paper's figures.

EmotionRankCLAP (Interspeech 2025, arXiv 2505.23732), Table 1: MSP-Podcast, the authors' protocol and models
(a frozen WavLM SER model, DistilRoBERTa, LLM-written descriptions). Their absolute values do not carry over to
another corpus or model (README: "How ERCLAP's numbers relate to the paper's"); they stand beside ours as the
reference the comparison of losses is read against. Definitions: docs/metrics.md.
"""

from __future__ import annotations

# Table 1 of the paper: its RNC model (EmotionRankCLAP) and its symmetric cross-entropy baseline (InfoNCE, "SCE").
PAPER_TABLE1 = {
    "rnc": {"voc": 0.616, "aoc": 0.552, "mmd": 0.087, "wasserstein": 0.065},
    "infonce": {"voc": 0.505, "aoc": 0.492, "mmd": 0.096, "wasserstein": 0.180},
}
PAPER_LOSS_NAMES = {"rnc": "RNC (EmotionRankCLAP)", "infonce": "SCE (InfoNCE)"}

# Display names: the paper's where it has one.
DISPLAY_NAMES = {
    "aoc": "AOC", "voc": "VOC", "aoc_voc_mean": "(AOC + VOC) / 2", "mmd": "MMD", "wasserstein": "Wasserstein",
    "anchor_tau_arousal": "anchor-wise τ, arousal", "anchor_tau_valence": "anchor-wise τ, valence",
    "r1_s2t": "R@1 speech→text", "r1_t2s": "R@1 text→speech", "ccc_zero_shot_arousal": "zero-shot CCC, arousal",
    "ccc_probe_arousal": "probe CCC, arousal", "ccc_probe_valence": "probe CCC, valence",
    "ser_ccc_arousal": "CCC, arousal", "ser_ccc_valence": "CCC, valence", "ser_ccc_dominance": "CCC, dominance",
    "ser_rank_accuracy": "pairwise ranking accuracy",
    "temperature": "temperature τ",
}

MEANINGS = {
    "aoc": "The paper's arousal ordinal consistency: Kendall's τ between the arousal levels of K descriptions and "
           "the true arousal of the clip each one retrieves (mean of random draws); 1 = retrieval keeps the order.",
    "voc": "The paper's valence ordinal consistency: the same as AOC for valence.",
    "aoc_voc_mean": "The mean of AOC and VOC.",
    "anchor_tau_arousal": "Ours, not the paper's AOC: per anchor, Kendall's τ of its similarities to the other "
                          "modality against −|Δ arousal|, averaged over anchors of both directions.",
    "anchor_tau_valence": "Ours, not the paper's VOC: the anchor-wise τ for valence.",
    "mmd": "Modality gap: unbiased squared MMD between the speech and the text embeddings (Gaussian kernel, "
           "median-heuristic bandwidth); lower = the two modalities closer.",
    "wasserstein": "Modality gap: W1 distance between the speech and the text embeddings (optimal matching); "
                   "lower = closer.",
    "r1_s2t": "Recall@1: the share of clips whose own description is the most similar of all descriptions.",
    "r1_t2s": "Recall@1: the share of descriptions whose own clip is the most similar of all clips.",
    "ccc_zero_shot_arousal": "Concordance of arousal predicted zero-shot (softmax over the level prompts' "
                             "similarities) with the true arousal.",
    "ccc_probe_arousal": "Concordance of a ridge probe on the frozen speech embeddings (fit on the train split) "
                         "with the true arousal.",
    "ccc_probe_valence": "The same probe for valence.",
    "ser_ccc_arousal": "Concordance of stage 1's predicted arousal with the true arousal.",
    "ser_ccc_valence": "Concordance of stage 1's predicted valence with the true valence.",
    "ser_ccc_dominance": "Concordance of stage 1's predicted dominance with the true dominance.",
    "ser_rank_accuracy": "The share of clip pairs that stage 1's predictions order as their labels do.",
    "temperature": "The contrastive loss's temperature at the evaluated step (learned, or fixed by "
                   "train.learn_temperature=False).",
}


def display_name(metric: str) -> str:
  """The paper's name of a metric where it has one, else a readable name, else the key itself."""
  return DISPLAY_NAMES.get(metric, metric)
