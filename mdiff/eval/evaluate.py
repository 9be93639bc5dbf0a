"""`mdiff eval`: sample every task a run was trained for with its sampling defaults and score the samples.

Every metric comes with its reference points on real data, computed in the same call:
``ceiling`` (the metric on real held-out data: real images, real / tokenizer-round-trip speech, real
text) and ``shuffled`` (the same real data with prompts and outputs mismatched), so a score can be read
between "as good as the data" and "unrelated to the prompt".

Runs on the synthetic dataset (no tokenizers) are scored on token ids: n-gram perplexity for text and
token accuracy against the corpus's own (deterministic) targets for the paired tasks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mdiff.diffusion.sampling import SamplerSettings
from mdiff.eval import text_metrics as tm
from mdiff.eval.generate import generate
from mdiff.eval.restore import LoadedRun
from mdiff.eval.tasks import trained_tasks

EVAL_FILE = "eval_samples.json"


def settings_for(run: LoadedRun, task: str, **overrides: Any) -> SamplerSettings:
    return SamplerSettings.from_config(run.config.sampling[task], **overrides)


def shuffled(items: Sequence[Any], seed: int = 0) -> list[Any]:
    """A derangement-ish shuffle (rotation after a shuffle) so no item keeps its partner."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    rotated = order[1:] + order[:1]
    out = [None] * len(items)
    for a, b in zip(order, rotated):
        out[a] = items[b]
    return out


def _chunks(stream: Sequence[int], length: int, count: int) -> list[list[int]]:
    return [list(stream[i : i + length]) for i in range(0, len(stream) - length + 1, length)][:count]


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
def text_references(run: LoadedRun, limit: int = 4000) -> tuple[list[list[int]], list[int], int]:
    """(training documents as local ids, held-out token stream, text vocabulary size)."""
    if run.tokenizers is None:
        from mdiff.data.corpus import synthetic_corpus

        train, test = synthetic_corpus("train"), synthetic_corpus("test")
        docs = [list(train.text[i]) + [train.text_eod] for i in range(len(train.text))]
        stream = [int(t) for i in range(len(test.text)) for t in list(test.text[i]) + [test.text_eod]]
        return docs, stream, run.vocab.text_size
    from mdiff.data import raw

    tok = run.tokenizers.text
    docs = [list(ids) + [tok.eod_id] for ids in tok.encode_batch(raw.documents(run.corpus_name, "train", limit))]
    stream = [int(t) for ids in tok.encode_batch(raw.documents(run.corpus_name, "test", limit)) for t in list(ids) + [tok.eod_id]]
    return docs, stream, tok.size


def eval_text(run: LoadedRun, n: int, seed: int, settings: SamplerSettings, batch_size: int) -> dict[str, Any]:
    docs, stream, size = text_references(run)
    lm = tm.NgramLM(order=3, vocab_size=size).fit(docs)
    length = run.seq_len - 1
    real = _chunks(stream, length, n)
    samples, _ = generate(run, "text", [None] * n, settings, seed=seed, batch_size=batch_size)
    samples = [list(map(int, s)) for s in samples]
    rng = np.random.default_rng(seed)
    scrambled = [list(rng.permutation(c)) for c in real]
    return {
        "gen_ppl": lm.perplexity(samples),
        "entropy_bits": tm.token_entropy(samples),
        "ceiling": {"gen_ppl": lm.perplexity(real), "entropy_bits": tm.token_entropy(real)},
        "shuffled": {"gen_ppl": lm.perplexity(scrambled)},
        "reference": f"interpolated Kneser-Ney trigram on {len(docs)} training documents",
        "examples": [_decode_text(run, s) for s in samples[:3]],
    }


def _decode_text(run: LoadedRun, ids: Sequence[int]) -> str:
    if run.tokenizers is None:
        return " ".join(map(str, ids))
    return run.tokenizers.text.decode(np.asarray(ids), stop_at_eod=False)


# ---------------------------------------------------------------------------------------------
# Paired tasks on the synthetic dataset: token accuracy against the corpus's targets
# ---------------------------------------------------------------------------------------------
def eval_synthetic_pairs(run: LoadedRun, task: str, n: int, seed: int, settings: SamplerSettings, batch_size: int) -> dict[str, Any]:
    from mdiff.data.corpus import synthetic_corpus
    from mdiff.data.pipeline import fit_slot
    from mdiff.eval.generate import slots

    corpus = synthetic_corpus("test")
    stream = corpus.image if task in ("t2i", "i2t") else corpus.audio
    s = slots(run)
    records = [stream[i] for i in range(min(n, len(stream)))]
    if task in ("t2i", "t2s"):
        conditions = [caption for _, caption in records]
        fill, slot = (None, s["image_tokens"]) if task == "t2i" else (s["audio_fill"], s["audio_slot"])
        targets = [np.asarray(t)[:slot] if fill is None else fit_slot(t, slot, fill, keep_end=False) for t, _ in records]
    else:
        conditions = [t for t, _ in records]
        targets = [fit_slot(c, s["text_slot"], s["text_eod"], keep_end=True) for _, c in records]
    samples, _ = generate(run, task, conditions, settings, seed=seed, batch_size=batch_size)

    def accuracy(outputs, refs):
        return float(np.mean([np.mean(np.asarray(o) == np.asarray(r)) for o, r in zip(outputs, refs)]))

    return {
        "token_accuracy": accuracy(samples, targets),
        "exact_match": float(np.mean([np.array_equal(o, r) for o, r in zip(samples, targets)])),
        "ceiling": {"token_accuracy": accuracy(targets, targets)},
        "shuffled": {"token_accuracy": accuracy(shuffled(targets, seed), targets)},
    }


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def image_judge(run: LoadedRun, max_train: int = 3000, seed: int = 0):
    from mdiff.data import raw
    from mdiff.eval.image_metrics import ImageJudge

    items = raw.captioned_images(run.corpus_name, "train")
    rng = np.random.default_rng(seed)
    if len(items) > max_train // 3:
        items = [items[i] for i in sorted(rng.choice(len(items), max_train // 3, replace=False))]
    images = np.stack([it["image"] for it in items])
    return ImageJudge.fit(images, [it["label"] for it in items], copies=3, seed=seed), items


def image_prompts(run: LoadedRun, train_items: list[dict], n: int) -> list[dict]:
    """Held-out digits (the judge generalises over handwriting) and emoji the judge knows (one image each)."""
    from mdiff.data import raw

    digits = [it for it in raw.captioned_images(run.corpus_name, "test") if it["source"] == "digits"]
    emoji = [it for it in train_items if it["source"] == "emoji"]
    half = n // 2 if emoji else n
    return (digits[:half] + emoji[: n - min(half, len(digits))])[:n]


def image_reference(run: LoadedRun, prompts: list[dict], train_items: list[dict]) -> np.ndarray:
    """Other real images with the prompts' mix of sources: validation digits, emoji not prompted."""
    from mdiff.data import raw

    n_digits = sum(p["source"] == "digits" for p in prompts)
    digits = [it for it in raw.captioned_images(run.corpus_name, "validation") if it["source"] == "digits"][:n_digits]
    used = {p["key"] for p in prompts}
    emoji = [it for it in train_items if it["source"] == "emoji" and it["key"] not in used][: len(prompts) - len(digits)]
    chosen = digits + emoji
    if len(chosen) < 2:
        chosen = train_items[: max(len(prompts), 2)]
    return np.stack([it["image"] for it in chosen])


def eval_t2i(run: LoadedRun, n: int, seed: int, settings: SamplerSettings, batch_size: int) -> dict[str, Any]:
    from mdiff.eval.image_metrics import frechet_distance

    judge, train_items = image_judge(run, seed=seed)
    prompts = image_prompts(run, train_items, n)
    labels = [p["label"] for p in prompts]
    real = np.stack([p["image"] for p in prompts])
    samples, _ = generate(run, "t2i", [p["caption"] for p in prompts], settings, seed=seed, batch_size=batch_size)
    tok = run.tokenizers.image
    generated = np.stack([tok.decode(s) for s in samples])
    round_trip = np.stack([tok.decode(tok.encode(img)) for img in real])
    reference = image_reference(run, prompts, train_items)
    feats = judge.features
    return {
        "accuracy": judge.accuracy(generated, labels),
        "fd": frechet_distance(feats(real), feats(generated)),
        "ceiling": {
            "accuracy_real": judge.accuracy(real, labels),
            "accuracy_tokenizer_round_trip": judge.accuracy(round_trip, labels),
            "fd_real_vs_other_real": frechet_distance(feats(real), feats(reference)),
            "fd_tokenizer_round_trip": frechet_distance(feats(real), feats(round_trip)),
        },
        "shuffled": {"accuracy_real": judge.accuracy(real, shuffled(labels, seed))},
        "judge": f"MLP on {len(judge.classes)} classes (digits + emoji names), hidden layer = FD features",
    }


def eval_i2t(run: LoadedRun, n: int, seed: int, settings: SamplerSettings, batch_size: int) -> dict[str, Any]:
    from mdiff.data import raw

    items = [it for it in raw.captioned_images(run.corpus_name, "test")][:n]
    samples, _ = generate(run, "i2t", [it["image"] for it in items], settings, seed=seed, batch_size=batch_size)
    texts = [run.tokenizers.text.decode(s) for s in samples]
    captions = [it["caption"] for it in items]
    labels = [it["label"] for it in items]
    return _text_scores(texts, captions, labels, seed)


def _text_scores(texts: list[str], refs: list[str], labels: list[str] | None, seed: int) -> dict[str, Any]:
    out = {"exact_match": tm.exact_match(texts, refs), "wer": tm.wer(texts, refs), "cer": tm.cer(texts, refs)}
    wrong = shuffled(refs, seed)
    out["ceiling"] = {"exact_match": 1.0, "wer": 0.0}
    out["shuffled"] = {"exact_match": tm.exact_match(wrong, refs), "wer": tm.wer(wrong, refs), "cer": tm.cer(wrong, refs)}
    if labels is not None:
        out["label_in_text"] = float(np.mean([tm.normalise(lab) in tm.normalise(t) for t, lab in zip(texts, labels)]))
    out["examples"] = [{"reference": r, "generated": t} for r, t in list(zip(refs, texts))[:3]]
    return out


# ---------------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------------
def transcriber(run: LoadedRun):
    """The t2s judge, over the words of every split's transcripts (the prompt set; see speech_metrics)."""
    from mdiff.data import raw
    from mdiff.eval.speech_metrics import Transcriber

    splits = ("train", "validation", "test")
    return Transcriber(it["transcript"] for split in splits for it in raw.speech_items(run.corpus_name, split))


def eval_t2s(run: LoadedRun, n: int, seed: int, settings: SamplerSettings, batch_size: int) -> dict[str, Any]:
    from mdiff.data import raw

    items = raw.speech_items(run.corpus_name, "test", n)
    refs = [it["transcript"] for it in items]
    samples, _ = generate(run, "t2s", refs, settings, seed=seed, batch_size=batch_size)
    tok = run.tokenizers.audio
    asr = transcriber(run)
    heard = asr.transcribe(tok.decode(s) for s in samples)
    real_wavs = [raw.speech_wav(it) for it in items]
    heard_real = asr.transcribe(real_wavs)
    heard_round_trip = asr.transcribe(tok.decode(tok.encode(w)) for w in real_wavs)
    return {
        "wer": tm.wer(heard, refs),
        "cer": tm.cer(heard, refs),
        "ceiling": {
            "wer_real": tm.wer(heard_real, refs),
            "cer_real": tm.cer(heard_real, refs),
            "wer_tokenizer_round_trip": tm.wer(heard_round_trip, refs),
            "cer_tokenizer_round_trip": tm.cer(heard_round_trip, refs),
        },
        "shuffled": {"wer_real": tm.wer(heard_real, shuffled(refs, seed))},
        "asr": f"pocketsphinx en-us with a bigram LM over the {len(asr.words)} words of the speech transcripts",
        "examples": [{"prompt": r, "heard": h} for r, h in list(zip(refs, heard))[:3]],
    }


def eval_s2t(run: LoadedRun, n: int, seed: int, settings: SamplerSettings, batch_size: int) -> dict[str, Any]:
    from mdiff.data import raw

    items = raw.speech_items(run.corpus_name, "test", n)
    samples, _ = generate(run, "s2t", [raw.speech_wav(it) for it in items], settings, seed=seed, batch_size=batch_size)
    texts = [run.tokenizers.text.decode(s) for s in samples]
    return _text_scores(texts, [it["transcript"] for it in items], None, seed)


EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "text": eval_text,
    "t2i": eval_t2i,
    "i2t": eval_i2t,
    "t2s": eval_t2s,
    "s2t": eval_s2t,
}


def evaluate_run(run: LoadedRun, *, tasks: Sequence[str] | None = None, num_samples: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Sample and score each task (default: every task the run was trained for)."""
    from mdiff.eval.tasks import check_task

    sampling = run.config.sampling
    n = int(num_samples or sampling.num_eval_samples)
    seed = int(sampling.seed if seed is None else seed)
    chosen = list(tasks) if tasks else list(trained_tasks(run.config))
    results: dict[str, Any] = {"step": run.step, "num_samples": n, "seed": seed, "dataset": run.corpus_name, "tasks": {}}
    for task in chosen:
        check_task(task, run.config)
        settings = settings_for(run, task)
        started = time.perf_counter()
        if run.tokenizers is None and task != "text":
            scores = eval_synthetic_pairs(run, task, n, seed, settings, int(sampling.batch_size))
        else:
            scores = EVALUATORS[task](run, n, seed, settings, int(sampling.batch_size))
        scores["settings"] = {k: getattr(settings, k) for k in settings.__dataclass_fields__}
        scores["seconds"] = round(time.perf_counter() - started, 2)
        results["tasks"][task] = scores
    return results
