"""Sampling from trained runs and scoring the samples.

* `restore`: run directory -> model, params, tokenizers (`load_run`).
* `generate`: prompts -> compiled sampler (mdiff.diffusion.sampling) -> generated ids.
* `text_metrics`, `image_metrics`, `speech_metrics`: the evaluators (n-gram generative perplexity and
  token entropy; an image judge with a Frechet distance in its feature space; pocketsphinx WER/CER;
  exact match / WER), each reported next to its ceiling on real data and its shuffled-data floor.
* `evaluate`: `mdiff eval` (writes eval_samples.json); `commands`: the `mdiff sample` / `mdiff eval` hooks.
"""
