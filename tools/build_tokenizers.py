"""Build the subword tokenizers that ``random:<family>`` models ship with (src/iclscope/data/tokenizers/).

Each family gets a BPE tokenizer of ``--vocab`` tokens (4096 by default, specials included) trained with
the ``tokenizers`` library, following the family's conventions:

* gpt2: byte-level BPE, GPT-2's pre-tokenizer regex (leading-space tokens such as "ĠParis"),
  "<|endoftext|>" last (id vocab-1) as BOS/EOS/UNK; the tokenizer adds no BOS.
* gpt_neox: as gpt2 with an NFC normalizer, "<|endoftext|>" at id 0 (BOS/EOS/UNK) and "<|padding|>" at
  id 1, as in Pythia; adds no BOS.
* llama: sentencepiece-style BPE over "▁"-marked words (Metaspace, prepend_scheme "first"), byte
  fallback tokens <0x00>..<0xFF>, "<unk>" 0, "<s>" 1 (BOS, added by the tokenizer), "</s>" 2 (EOS).
* qwen2: byte-level BPE with Qwen2's pre-tokenizer regex (digits one by one) and NFC normalizer,
  specials "<|endoftext|>" (EOS and pad; no BOS token, none added), "<|im_start|>", "<|im_end|>" last.

Training text (all open; see src/iclscope/data/tokenizers/SOURCES.md):

* the King James Bible (public domain), Debian ``bible-kjv`` (the ``bible`` program and its text);
* the vocabulary of iclscope's word tasks, so that their words get tokens of their own: the inputs and
  outputs of the antonym, synonym, present-past, singular-plural (WordNet 3.0 + lemminflect) and
  country-capital (countryinfo) builders of ``iclscope.tasks.build``, the WordNet animal, color and
  fruit words of its odd-one-out tasks, and number words. Each word is repeated a number of times
  that grows with its SemCor count (countries, capitals and numbers a fixed number of times), each
  time after a space, which is how it follows "A:" in a prompt.

Run (from the repository root; needs ``apt-get install bible-kjv wordnet-base`` and
``pip install countryinfo lemminflect``)::

    PYTHONPATH=src python tools/build_tokenizers.py            # writes src/iclscope/data/tokenizers/
    PYTHONPATH=src python tools/build_tokenizers.py --check    # rebuild in memory, compare with the shipped files

The build is deterministic: the same inputs give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread: merge ties are broken the same way every run

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "iclscope" / "data" / "tokenizers"
FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2")

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
           "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
           "million first second third fourth fifth sixth seventh eighth ninth tenth").split()

# special tokens: (tokens placed before the learned ones, tokens placed after them, role -> token)
SPECIALS = {
    "gpt2": ([], ["<|endoftext|>"], dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")),
    "gpt_neox": (["<|endoftext|>", "<|padding|>"], [],
                 dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")),
    "llama": (["<unk>", "<s>", "</s>"], [], dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")),
    "qwen2": ([], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")),
}


# --------------------------------------------------------------------------------------------------
# Training text
# --------------------------------------------------------------------------------------------------


def kjv_verses() -> list[str]:
    """Every verse of the King James Bible, one string each, from Debian's ``bible`` program."""
    try:
        out = subprocess.run(["bible", "-l", "100000", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, COLUMNS="100000")).stdout
    except FileNotFoundError:
        sys.exit("the `bible` program is missing: apt-get install bible-kjv")
    verses = [m.group(1).strip() for m in re.finditer(r"^\s+\d+ (.+)$", out, flags=re.M)]
    if len(verses) < 31000:
        sys.exit(f"expected ~31102 KJV verses, got {len(verses)}")
    return verses


def task_words(limit: int = 1200) -> list[str]:
    """The ``limit`` words of iclscope's word tasks that most deserve a token of their own, best first.

    First the words of the country-capital task, the number words and the WordNet animal, color and
    fruit words of the odd-one-out tasks (~640 words), then the words of the antonym, synonym,
    present-past and singular-plural tasks by their SemCor count (most frequent first).
    """
    from iclscope.tasks import build as tb

    res = tb.Resources(seed=0)
    wn = res.wordnet()

    def sem(word: str) -> int:  # SemCor count over parts of speech, 0 for words it has not seen
        return sum(wn.count(word, p) for p in "nvar")

    score: dict[str, float] = {}
    for country, capital in tb.BUILDERS["country-capital"].make(res):
        for w in (country + " " + capital).split():
            score[w] = float("inf")
    for w in NUMBERS:
        score[w] = float("inf")
    for cat, other in ((tb.ANIMAL, tb.ARTIFACT), (tb.COLOR, tb.ANIMAL), (tb.FRUIT, tb.ANIMAL)):
        for w in tb._category_words(wn, cat, [other.root]):
            score[w] = float("inf")
    for name in ("antonym", "synonym", "present-past", "singular-plural"):
        for pair in tb.BUILDERS[name].make(res):
            for w in pair:
                score.setdefault(w, sem(w))
    ranked = sorted(score, key=lambda w: (-score[w], w))
    return ranked[:limit]


def corpus(verses: list[str], words: list[str], reps: int) -> list[str]:
    """The training text as a list of lines: the verses, then each task word ``reps`` times after spaces."""
    return list(verses) + [" " + " ".join([w] * reps) for w in words]


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def _pipeline(family: str):
    """(normalizer, pre_tokenizer, decoder) of a family."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    if family == "llama":
        dec = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                 decoders.Strip(" ", 1, 0)])
        return None, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True), dec
    if family == "qwen2":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        return normalizers.NFC(), pre, decoders.ByteLevel()
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return (normalizers.NFC() if family == "gpt_neox" else None), pre, decoders.ByteLevel()


def train(family: str, lines: list[str], vocab_size: int):
    """A ``tokenizers.Tokenizer`` of exactly ``vocab_size`` tokens for ``family``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    first, last, _ = SPECIALS[family]
    norm, pre, dec = _pipeline(family)
    n_bytes = 256 if family == "llama" else 0
    tok = Tokenizer(models.BPE())
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = pre
    if family == "llama":
        alphabet = sorted({c for line in lines for c in line.replace(" ", "▁")})
        alphabet = [c for c in alphabet if c.isascii() or c == "▁"]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(first) - len(last) - n_bytes, show_progress=False,
                                      initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    else:
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(first) - len(last), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))

    # lay the ids out as the family does: specials (and llama's byte tokens) around the learned tokens
    learned = json.loads(tok.to_str())["model"]
    order = sorted(learned["vocab"], key=learned["vocab"].get)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    layout = first + [f"<0x{b:02X}>" for b in range(n_bytes)] + order + last
    assert len(layout) == len(set(layout)) == vocab_size, (family, len(layout), vocab_size)
    vocab = {t: i for i, t in enumerate(layout)}
    if family == "llama":
        model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    else:
        model = models.BPE(vocab=vocab, merges=merges)
    out = Tokenizer(model)
    if norm is not None:
        out.normalizer = norm
    out.pre_tokenizer = pre
    out.decoder = dec
    out.add_special_tokens(first + last)
    if family == "llama":
        out.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    else:
        out.post_processor = processors.ByteLevel(trim_offsets=False)
    return out


def write(family: str, tok, folder: Path) -> None:
    """``folder/tokenizer.json`` and ``folder/tokenizer_config.json`` (special-token roles)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **SPECIALS[family][2],
              "add_bos_token": family == "llama", "add_eos_token": False, "model_max_length": 2048,
              "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=4096, help="tokens per tokenizer, specials included (default 4096)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--words", type=int, default=1200, help="task words in the training text (default 1200)")
    ap.add_argument("--reps", type=int, default=200, help="repetitions of each task word (default 200)")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--check", action="store_true", help="build into a temporary folder and compare with --out")
    args = ap.parse_args(argv)

    verses, words = kjv_verses(), task_words(args.words)
    lines = corpus(verses, words, args.reps)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    print(f"corpus: {len(verses)} KJV verses + {len(words)} task words "
          f"x {args.reps}; sha256 {digest[:16]}")
    target = Path(tempfile.mkdtemp()) if args.check else args.out
    bad = 0
    for family in args.families.split(","):
        tok = train(family, lines, args.vocab)
        write(family, tok, target / family)
        print(f"{family}: {tok.get_vocab_size()} tokens -> {target / family}")
        if args.check:
            for f in ("tokenizer.json", "tokenizer_config.json"):
                same = (target / family / f).read_bytes() == (args.out / family / f).read_bytes()
                bad += not same
                print(f"  {f}: {'identical' if same else 'DIFFERS'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
