"""Temporary re-export: the vocabulary moved to `mdiff.vocab` (the contract data, model, loss and sampler share)."""

from mdiff.vocab import *  # noqa: F401,F403
from mdiff.vocab import MODALITY_BY_NAME, MODALITY_NAMES, SPECIAL_TOKENS, TASKS, Modality, UnifiedVocab, VocabError  # noqa: F401
