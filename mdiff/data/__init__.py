"""Offline tri-modal data: corpora, tokenizers, TFDS ArrayRecord datasets and the grain pipeline.

Modules (import what you need; nothing heavy is imported here). The vocabulary they tokenise into is
`mdiff.vocab` (shared with the model, loss and samplers).

* `layout`     THE BATCH CONTRACT and the per-task example layouts.
* `pipeline`   make_pipeline(config, split, *, process_index, process_count) -> Pipeline (host-local
               batches, mixing, packing, exact resume); dataset "synthetic" needs no files.
* `build`      build_dataset(data_dir, *, scale, force, progress, settings) -> manifest.
* `tokenizers` load_tokenizers(data_dir) -> Tokenizers (.text / .image / .audio, .vocab, slots).
* `prompts`    make_prompt(tokenizers, task, condition, seq_len) and decode_output for samplers.
* `raw`        held-out documents, captioned images, speech items and real speech for evaluators.
* `quality`    tokenizer reconstruction figures (text round trip, image PSNR, pocketsphinx WER).
* `sources`    the raw corpora from Debian packages and scikit-learn.
* `commands`   `mdiff data build|info` CLI hooks.
"""
