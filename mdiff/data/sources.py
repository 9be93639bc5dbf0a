"""Raw offline corpora, read deterministically from local Debian packages and scikit-learn.

* text: the KJV Bible (one document per chapter) and the fortunes collection (one per fortune);
* image-text: named colour emoji rendered small, captioned with their Unicode names, and
  scikit-learn's handwritten digits with templated captions;
* audio-text: texts (number words, digit strings, emoji names, short fortunes) for espeak-ng to speak
  with several voices, speeds and pitches; plus the real pocketsphinx-testdata clips (held out).

Every item carries a `key` naming its source item; splits are assigned from the key alone, so the
same source item (a chapter, an emoji, a spoken text in any voice) never lands in two splits.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import unicodedata
import wave
from collections.abc import Iterator

import numpy as np

from mdiff.data.errors import DataError

SPLITS = ("train", "validation", "test")
SAMPLE_RATE = 16000

FORTUNES_DIR = "/usr/share/games/fortunes"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
REAL_SPEECH_DIR = "/usr/share/pocketsphinx/test/data"
BIBLE_DATA = "/usr/lib/bible.data"  # the text the `bible` program reads


class MissingPackageError(DataError):
    """A Debian package the corpora are built from is not installed."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A program or file the data build reads, and the Debian package that ships it (`dpkg -S` says so)."""

    package: str
    command: str | None = None  # a program looked up on PATH
    path: str | None = None  # a file or directory

    def resolve(self) -> str:
        """The program's or file's path; a MissingPackageError naming the package when it is absent."""
        found = shutil.which(self.command) if self.command else (self.path if os.path.exists(self.path or "") else None)
        if found is None:
            raise MissingPackageError(
                f"{self.command or self.path} not found: install the Debian package with `sudo apt-get install {self.package}`"
            )
        return found


def requirements() -> dict[str, Requirement]:
    """Every external program and data file `mdiff data build` uses (one table: the build and its tests read it)."""
    return {
        "bible": Requirement("bible-kjv", command="bible"),
        "bible-text": Requirement("bible-kjv-text", path=BIBLE_DATA),
        "fortunes": Requirement("fortunes", path=FORTUNES_DIR),
        "emoji-font": Requirement("fonts-noto-color-emoji", path=EMOJI_FONT),
        "espeak-ng": Requirement("espeak-ng", command="espeak-ng"),
        "real-speech": Requirement("pocketsphinx-testdata", path=REAL_SPEECH_DIR),
    }


def check_requirements() -> None:
    """Before a build touches its directory: one error naming every missing package, with the install line."""
    missing = {}
    for requirement in requirements().values():
        try:
            requirement.resolve()
        except MissingPackageError:
            missing[requirement.package] = requirement.command or requirement.path
    if missing:
        found = ", ".join(f"{what} ({package})" for package, what in missing.items())
        raise MissingPackageError(f"not found: {found}; install with `sudo apt-get install {' '.join(missing)}`")


def require(name: str) -> str:
    """The path of requirement `name` (see `requirements()`), or the error naming its package."""
    return requirements()[name].resolve()


def split_of(key: str, fractions: tuple[float, float] = (0.9, 0.05)) -> str:
    """Deterministic split of a source item from its key: 90% train, 5% validation, 5% test."""
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


def keep_for_scale(key: str, scale: str, tiny_fraction: float) -> bool:
    """Which items a "tiny" build keeps: a fixed, key-hashed subset."""
    if scale == "full":
        return True
    u = int.from_bytes(hashlib.sha1(b"tiny:" + key.encode()).digest()[:8], "big") / 2.0**64
    return u < tiny_fraction


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Document:
    key: str
    text: str
    source: str


_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def bible_chapters() -> list[Document]:
    program = require("bible")
    require("bible-text")
    out = subprocess.run([program, "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = _VERSE.match(line.strip())
        if match:
            book, chapter, _, verse = match.groups()
            chapters.setdefault(f"{book} {chapter}", []).append(verse.strip())
    if len(chapters) < 1000:
        raise MissingPackageError(
            "`bible` printed too little text: reinstall with `sudo apt-get install --reinstall bible-kjv bible-kjv-text`"
        )
    return [Document(f"kjv/{name}", " ".join(verses), "kjv") for name, verses in chapters.items()]


def fortune_files() -> list[str]:
    """The fortune files the corpus reads (the UTF-8 `.u8` copy where there is one); ASCII-art files are
    left out (they are pictures, not prose)."""
    require("fortunes")
    files = []
    for path in sorted(glob.glob(os.path.join(FORTUNES_DIR, "*"))):
        name = os.path.basename(path)
        if "." in name or os.path.isdir(path) or name in ("art", "ascii-art"):
            continue
        files.append(path + ".u8" if os.path.exists(path + ".u8") else path)
    return files


def fortunes() -> list[Document]:
    """One document per fortune."""
    docs = []
    for path in fortune_files():
        name = os.path.basename(path).removesuffix(".u8")
        with open(path, encoding="utf-8", errors="replace") as f:
            chunks = re.split(r"^%\s*$", f.read(), flags=re.M)
        for i, chunk in enumerate(chunks):
            text = chunk.strip("\n")
            if text.strip():
                docs.append(Document(f"fortune/{name}/{i}", text, "fortunes"))
    if not docs:
        raise MissingPackageError(f"no fortunes under {FORTUNES_DIR}: install with `sudo apt-get install fortunes`")
    return docs


def text_documents(scale: str = "full") -> list[Document]:
    docs = bible_chapters() + fortunes()
    return [d for d in docs if keep_for_scale(d.key, scale, 0.05)]


# ---------------------------------------------------------------------------------------------
# Images with captions
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    key: str
    image: np.ndarray  # uint8 [size, size, 3]
    caption: str
    source: str  # "emoji" | "digits"
    label: str  # the emoji's Unicode name or the digit


EMOJI_RANGES = ((0x2600, 0x27C0), (0x1F300, 0x1FB00))
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = (
    "a handwritten {w}",
    "the digit {w} written by hand",
    "a scanned handwritten number {w}",
    "a small picture of the number {w}",
    "handwritten digit {w}",
)


def emoji_images(size: int, scale: str = "full") -> list[CaptionedImage]:
    require("emoji-font")
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(EMOJI_FONT, 109)  # the only size this bitmap font has
    items = []
    for lo, hi in EMOJI_RANGES:
        for code in range(lo, hi):
            char = chr(code)
            name = unicodedata.name(char, "")
            key = f"emoji/U+{code:04X}"
            if not name or not keep_for_scale(key, scale, 0.15) or not font.getmask(char).getbbox():
                continue
            canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 0))
            ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
            box = canvas.getbbox()
            if box is None:
                continue
            white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
            glyph = Image.alpha_composite(white, canvas).convert("RGB").crop(_square(box, canvas.size))
            pixels = np.asarray(glyph.resize((size, size), Image.Resampling.BOX), np.uint8)
            items.append(CaptionedImage(key, pixels, name.lower(), "emoji", name))
    return items


def _square(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    x0 = min(max(cx - side // 2, 0), max(size[0] - side, 0))
    y0 = min(max(cy - side // 2, 0), max(size[1] - side, 0))
    return x0, y0, x0 + side, y0 + side


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits ([N, 8, 8] in 0..16, labels), read without importing sklearn."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("scikit-learn is not installed: `pip install scikit-learn` (it ships the digits)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def digit_images(size: int, scale: str = "full") -> list[CaptionedImage]:
    from PIL import Image

    images, labels = _load_digits()
    items = []
    for i, (pixels, label) in enumerate(zip(images, labels)):
        key = f"digits/{i}"
        if not keep_for_scale(key, scale, 0.1):
            continue
        gray = Image.fromarray(np.uint8(np.round(pixels * (255 / 16))))
        rgb = np.repeat(np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR))[..., None], 3, axis=-1)
        template = DIGIT_TEMPLATES[int(hashlib.sha1(key.encode()).digest()[0]) % len(DIGIT_TEMPLATES)]
        word = DIGIT_WORDS[int(label)]
        items.append(CaptionedImage(key, rgb, template.format(w=word), "digits", word))
    return items


# ---------------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SpeechText:
    key: str  # the source item (an emoji or fortune shares its key, hence its split, with the other sets)
    text: str
    source: str  # "numbers" | "digits" | "emoji" | "fortunes"


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 1000 ("four hundred and twenty seven")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def speech_texts(scale: str = "full", max_words: int = 6) -> list[SpeechText]:
    texts = [SpeechText(f"n/{n}", number_words(n), "numbers") for n in range(1000)]
    rng = np.random.default_rng(1234)
    for i in range(400):
        digits = rng.integers(0, 10, size=int(rng.integers(2, 5)))
        texts.append(SpeechText(f"d/{i}", " ".join(_ONES[d] for d in digits), "digits"))
    seen = set()
    for lo, hi in EMOJI_RANGES:
        for code in range(lo, hi):
            name = unicodedata.name(chr(code), "").lower()
            if name and re.fullmatch(r"[a-z ]+", name) and len(name.split()) <= max_words and name not in seen:
                seen.add(name)
                texts.append(SpeechText(f"emoji/U+{code:04X}", name, "emoji"))
    for doc in fortunes():
        words = re.sub(r"[^a-z' ]+", " ", doc.text.lower()).split()
        if 2 <= len(words) <= max_words and "\n" not in doc.text.strip():
            texts.append(SpeechText(doc.key, " ".join(words), "fortunes"))
    unique = {t.key: t for t in texts}
    return [t for t in unique.values() if keep_for_scale(t.key, scale, 0.06)]


class AudioError(DataError):
    """Bytes that are not 16-bit PCM WAV audio."""


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> (float32 mono in [-1, 1), sample rate); AudioError for anything else."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise AudioError(f"not a WAV file ({e or 'empty'})") from None
    if width != 2:
        raise AudioError(f"expected 16-bit PCM audio, got {8 * width}-bit")
    x = np.frombuffer(raw, np.int16).astype(np.float32) / 32768.0
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x, rate


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    g = np.gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def trim_silence(x: np.ndarray, threshold: float = 0.01, pad: int = 800) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > threshold)
    if not loud.size:
        return x[:pad]
    return x[max(loud[0] - pad, 0) : loud[-1] + pad]


@functools.lru_cache(maxsize=1)
def _espeak() -> str:
    return require("espeak-ng")


def synthesize(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50) -> np.ndarray:
    """espeak-ng speech for `text`: float32 mono at 16 kHz, leading/trailing silence trimmed.

    One process per utterance: espeak-ng keeps state between utterances (e.g. its pitch-flutter
    phase), so only a fresh process gives the same waveform for the same text every time.
    """
    cmd = [_espeak(), "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        raise ValueError(f"espeak-ng could not speak {text!r} with voice {voice!r}: {proc.stderr.decode().strip()[:200]}")
    x, rate = parse_wav(proc.stdout)
    return trim_silence(resample(x, rate))


def synthesize_many(requests: list[tuple[str, str, int, int]], threads: int = 4) -> Iterator[np.ndarray]:
    """`synthesize` over (text, voice, speed, pitch) requests, in order, several processes at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(lambda r: synthesize(*r), requests)


def voicing(key: str, voices: list[str], speeds: list[int], pitches: list[int]) -> tuple[str, int, int]:
    """The voice, speed and pitch a text is spoken with (a fixed function of its key)."""
    h = hashlib.sha1(b"voice:" + key.encode()).digest()
    return voices[h[0] % len(voices)], speeds[h[1] % len(speeds)], pitches[h[2] % len(pitches)]


@dataclasses.dataclass(frozen=True)
class SpeechClip:
    key: str
    wav: np.ndarray  # float32 at 16 kHz
    transcript: str


def real_speech_clips() -> list[SpeechClip]:
    """The real recordings of pocketsphinx-testdata with their transcripts (a held-out set)."""
    require("real-speech")
    clips = []
    for listing in ("librivox/transcription", "cards/cards.transcription"):
        folder = os.path.join(REAL_SPEECH_DIR, os.path.dirname(listing))
        with open(os.path.join(REAL_SPEECH_DIR, listing)) as f:
            for line in f:
                match = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)", line)
                if not match:
                    continue
                text, name = match.group(1).strip(), match.group(2).strip()
                path = os.path.join(folder, name + ".wav")
                with open(path, "rb") as wav:
                    x, rate = parse_wav(wav.read())
                clips.append(SpeechClip(f"real/{name}", resample(x, rate), " ".join(text.split())))
    return clips
