"""Calibration sets: ``nsamples`` sequences of exactly ``seqlen`` tokens, built from a seed.

Recipes name the text (``@CORPUS`` picks a corpus from the catalog; UDHR by default):

- ``mono:de``: one language; ``mix:en+de+zh``: equal shares of one budget of sequences;
  ``mix:de=1+hi=2+sw=1``: shares in proportion to the weights (largest remainder, so
  each language is within one sequence of its exact share); in a weighted mix
  an element may name its own corpus, ``mix:de=1+yo@flores=2`` (``@CORPUS``
  after the last weight is the default for the others);
- ``mt:fr-en``: few-shot translation demonstrations (translation-feature paper,
  Appendix A): each of the N sequences holds n shots ``French: s`` newline
  ``English: t`` then EOS, from random parallel pairs;
- ``demo:fr``: monolingual demonstrations, ``French: s`` then EOS per shot;
- ``code``: Python source (the ``python-code`` corpus);
- ``file:PATH`` or ``file:PATH@de``: the user's txt, jsonl or tsv file;
- ``gen:yo``: text the model writes itself from seed phrases, for a language no corpus has (``self_generated``);
  in a mix, ``yo@gen`` is such an element.

Text recipes cut the joined text into consecutive windows of ``seqlen``
tokens; demonstration recipes keep each demonstration whole in its own
sequence (as the paper feeds them), right-padded to ``seqlen`` with the
padding masked out, or cut at ``seqlen`` with a warning. Language recipes read
only the calibration part of a corpus, never its evaluation part.
Pre-tokenized sets (an ``n x seqlen`` tensor of ids, optionally with a mask)
are accepted as they are, for token-for-token comparisons with other tools.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import get_corpus, read_local, text_corpora_with
from .engine import Tag, TokenBatch
from .engine.statistics import LanguageAggregation, parse_aggregation
from .errors import UserError, check_at_least
from .languages import NAMES, SEED_PHRASES, check_language, english_name
from .self_generated import GENERATED, generate_rows, prompts
from .text import demonstration_ids, pad_id, text_windows

DEFAULT_CORPUS = "udhr"
DEFAULT_SHOTS = 4
DEFAULT_NSAMPLES = {"text": 128, "demonstrations": 100}
RECIPE_HELP = (
    "use mono:LANG, mix:LANG+LANG, mt:SRC-TGT, demo:LANG, code or file:PATH, each optionally @CORPUS, "
    "or gen:LANG (self-generated)"
)


@dataclass
class CalibrationSet:
    """``n x seqlen`` token ids with their mask of real tokens, where they came from, and each row's language."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sources: list[dict] = field(default_factory=list)
    recipe: str = "tokens"
    seed: int = 0
    layout: str = "windows"  # windows | demonstrations | tokens
    row_languages: list[str | None] = field(default_factory=list)  # one per row; empty when unknown

    def __post_init__(self):
        if self.input_ids.ndim != 2 or self.input_ids.shape[0] == 0 or self.input_ids.shape[1] == 0:
            raise UserError("calibration is empty: give at least one non-empty sequence")
        if int(self.attention_mask.sum()) == 0:
            raise UserError("calibration has no real tokens: every position is padding")

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int, role: str = "calibration", by_language: bool = False) -> list[TokenBatch]:
        """Consecutive batches of rows, each tagged with ``role``, the set's layout and its language (None if mixed).

        ``by_language`` also starts a new batch where the language changes, so every batch has one language
        (what per-language statistics need); without it the batching is the plain one, as it always was.
        """
        check_at_least("batch size", batch_size, 1)
        rows = self.input_ids.shape[0]
        languages = self.row_languages or [None] * rows
        starts = list(range(0, rows, batch_size))
        if by_language:
            starts, start = [], 0
            for i in range(1, rows + 1):
                if i == rows or languages[i] != languages[start] or i - start == batch_size:
                    starts.append(start)
                    start = i
        out = []
        for i, end in zip(starts, [*starts[1:], rows]):
            present = set(languages[i:end])
            tag = Tag(role, present.pop() if len(present) == 1 else None, self.layout)
            out.append(TokenBatch(self.input_ids[i:end], self.attention_mask[i:end], tag))
        return out

    def aggregation(self, text: str) -> LanguageAggregation:
        """The ``--lang-aggregate`` of this set: its languages' weights (from the recipe) and real tokens."""
        mode, power = parse_aggregation(text)
        if mode == "tokens":
            return LanguageAggregation()
        if not self.row_languages or None in self.row_languages:
            raise UserError(
                f"--lang-aggregate {text} combines languages, and calibration {self.recipe!r} has rows without one: "
                "use mix:LANG+LANG or --serve"
            )
        tokens: dict[str, int] = {}
        for language, mask in zip(self.row_languages, self.attention_mask):
            tokens[language] = tokens.get(language, 0) + int(mask.sum())
        weights = {s["language"]: float(s.get("weight", 1.0)) for s in self.sources if s.get("language") in tokens}
        return LanguageAggregation(mode, power, weights, tokens)

    def summary(self) -> dict:
        return {
            "recipe": self.recipe,
            "seed": self.seed,
            "layout": self.layout,
            "sequences": int(self.input_ids.shape[0]),
            "seqlen": int(self.input_ids.shape[1]),
            "tokens": self.tokens,
            "languages": sorted({s["language"] for s in self.sources if s.get("language")}),
            "sources": self.sources,
        }

    @classmethod
    def from_tokens(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CalibrationSet:
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        if input_ids.ndim == 1:
            input_ids = input_ids.unsqueeze(0)
        mask = (
            torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
        )
        if mask.shape != input_ids.shape:
            raise UserError(f"attention mask shape {tuple(mask.shape)} differs from input ids {tuple(input_ids.shape)}")
        return cls(input_ids, mask, [{"name": "pre-tokenized", "sequences": int(input_ids.shape[0])}], layout="tokens")


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe string: what kind of text, which languages, from which corpus or file."""

    text: str
    kind: str  # mono | mix | mt | demo | code | file | gen
    languages: tuple[str, ...] = ()
    corpus: str = DEFAULT_CORPUS
    path: str = ""
    weights: tuple[float, ...] = ()  # mix: one per language (empty: equal shares)
    corpora: tuple[str, ...] = ()  # mix: one per language (empty: ``corpus`` for all)

    def corpus_of(self, index: int) -> str:
        return self.corpora[index] if self.corpora else self.corpus

    @property
    def layout(self) -> str:
        return "demonstrations" if self.kind in ("mt", "demo") else "text"


def parse_recipe(text: str) -> Recipe:
    """Read a recipe string; one clear error line for anything malformed."""
    kind, _, arg = text.strip().partition(":")
    if kind == "file":
        path, _, language = arg.rpartition("@")
        if not path or language not in NAMES:
            path, language = arg, ""
        if not path:
            raise UserError(f"malformed calibration recipe {text!r}: file needs a path, e.g. file:notes.txt@de")
        return Recipe(text, "file", (check_language(language),) if language else (), path=path)
    if kind.startswith("code"):
        corpus = kind.partition("@")[2] or "python-code"
        if arg or kind not in ("code", f"code@{corpus}"):
            raise UserError(f"malformed calibration recipe {text!r}: write code or code@CORPUS")
        if get_corpus(corpus).kind != "code":
            raise UserError(
                f"recipe {text!r}: {corpus} is a {get_corpus(corpus).kind} corpus, not code; "
                "write code (the python-code corpus) or mono:LANG@" + corpus
            )
        return Recipe(text, "code", ("code",), corpus)
    if kind == "mix" and "=" in arg:
        return _parse_mix(text, arg)
    if kind == "gen":
        if not re.fullmatch(r"[a-z]{2,3}", arg):
            raise UserError(f"malformed calibration recipe {text!r}: gen takes one language, e.g. gen:yo")
        return Recipe(text, "gen", (check_language(arg),), GENERATED)
    arg, _, corpus = arg.partition("@")
    corpus = corpus or DEFAULT_CORPUS
    if kind in ("mono", "demo") and re.fullmatch(r"[a-z]{2,3}", arg):
        return Recipe(text, kind, (check_language(arg),), corpus)
    if kind == "mix" and re.fullmatch(r"[a-z]{2,3}(\+[a-z]{2,3})+", arg):
        languages = tuple(check_language(lang) for lang in arg.split("+"))
        if len(set(languages)) != len(languages):
            raise UserError(f"recipe {text!r} names a language twice")
        return Recipe(text, "mix", languages, corpus)
    if kind == "mt" and re.fullmatch(r"[a-z]{2,3}-[a-z]{2,3}", arg):
        source, target = (check_language(lang) for lang in arg.split("-"))
        if source == target:
            raise UserError(f"recipe {text!r} translates {source} into itself: name two languages, e.g. mt:fr-en")
        return Recipe(text, "mt", (source, target), corpus)
    if kind == "mono" and "+" in arg:
        raise UserError(f"recipe {text!r}: mono takes one language, e.g. mono:de; use mix:en+de for several")
    raise UserError(f"malformed calibration recipe {text!r}: {RECIPE_HELP}")


_ELEMENT = re.compile(r"([a-z]{2,3})(?:@([\w.-]+))?(?:=([^+@]*))?")


def _parse_mix(text: str, arg: str) -> Recipe:
    """Weighted mixes, ``mix:de=1+hi@flores=2+sw=1[@CORPUS]``: a corpus before an element's ``=`` is that
    language's own; one after the last weight is the default of the others (as in ``mix:en+de@CORPUS``)."""
    body, default = arg, DEFAULT_CORPUS
    if arg.rfind("@") > arg.rfind("="):
        body, _, default = arg.rpartition("@")
    languages, weights, corpora = [], [], []
    for element in body.split("+"):
        match = _ELEMENT.fullmatch(element)
        if not match:
            raise UserError(
                f"malformed calibration recipe {text!r}: {element!r} is not LANG[@CORPUS][=WEIGHT], "
                "e.g. mix:de=1+hi=2+sw=1"
            )
        language, corpus, weight = match.groups()
        languages.append(check_language(language))
        corpora.append(corpus or default)
        weights.append(serving_weight(weight, language, text) if weight is not None else 1.0)
    if len(set(languages)) != len(languages):
        raise UserError(f"recipe {text!r} names a language twice")
    same_corpus = len(set(corpora)) == 1
    return Recipe(
        text,
        "mix",
        tuple(languages),
        corpora[0] if same_corpus else default,
        weights=tuple(weights),
        corpora=() if same_corpus else tuple(corpora),
    )


def serving_weight(value: str, language: str, where: str) -> float:
    """A language's weight: a finite number above zero."""
    try:
        weight = float(value)
    except ValueError:
        raise UserError(f"{where}: the weight of {language}, {value!r}, is not a number") from None
    if not weight > 0 or weight == float("inf"):
        raise UserError(f"{where}: the weight of {language} must be a finite number above 0, not {value}")
    return weight


def shares(total: int, weights: list[float]) -> list[int]:
    """``total`` sequences split in proportion to ``weights`` (largest remainder; ties to the earlier language),
    so that every share is within one sequence of its exact value. Equal weights give the equal split."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def serve_recipe(serve: str | dict) -> str:
    """The weighted-mix recipe for the languages a user serves (``"de,hi=2,sw"`` or ``{"de": 1, "hi": 2}``):
    each language from UDHR when it has it, else from the first usable text corpus in the catalog that does, else
    self-generated (``LANG@gen``) where langprune has seed phrases for it."""
    if isinstance(serve, dict):
        items = [(str(lang), str(weight)) for lang, weight in serve.items()]
    else:
        items = [element.strip().partition("=")[::2] for element in str(serve).split(",") if element.strip()]
    if not items:
        raise UserError("--serve names no language: give LANG[=WEIGHT],..., e.g. --serve de,hi=2,sw")
    elements, seen = [], set()
    for language, weight in items:
        language = check_language(language.strip())
        if language in seen:
            raise UserError(f"--serve names {language} twice: give each language once, with its weight")
        seen.add(language)
        weight = serving_weight(weight.strip() or "1", language, "--serve")
        corpora = [c.name for c in text_corpora_with(language)] or ([GENERATED] if language in SEED_PHRASES else [])
        if not corpora:
            raise UserError(
                f"--serve {language}: no corpus here has {english_name(language)} text, and langprune has no seed "
                f"phrases to generate it from; calibrate with your own text, --calib file:PATH@{language}"
            )
        corpus = DEFAULT_CORPUS if DEFAULT_CORPUS in corpora else corpora[0]
        elements.append(f"{language}{'' if corpus == DEFAULT_CORPUS else '@' + corpus}={weight:g}")
    return "mix:" + "+".join(elements)


def check_recipe(text: str) -> Recipe:
    """Everything about a recipe that can be checked without a tokenizer: its form, corpus, languages and file."""
    parsed = parse_recipe(text)
    if parsed.kind == "file":
        read_local(Path(parsed.path).expanduser(), parsed.languages[0] if parsed.languages else None)
    else:
        for index, language in enumerate(parsed.languages):
            if parsed.corpus_of(index) == GENERATED:
                prompts(language)
            else:
                get_corpus(parsed.corpus_of(index)).check(language)
    return parsed


def build(
    recipe: str,
    tokenizer,
    nsamples: int | None = None,
    seqlen: int = 512,
    seed: int = 0,
    shots: int = DEFAULT_SHOTS,
    model=None,
    part: str = "calibration",
) -> CalibrationSet:
    """Build a calibration set from a recipe; fewer sequences, with a warning, if text runs out.

    ``nsamples`` defaults to 128 sequences of text, or 100 demonstrations (the paper's N). ``model`` writes the
    text of self-generated elements (``gen:LANG``, ``LANG@gen``); other recipes need only the tokenizer.
    ``part`` is the corpus part that language recipes read: the calibration part, or for the advisor's trial
    prunes its fitting part (the calibration part less the development part that scores them).
    """
    parsed = parse_recipe(recipe)
    nsamples = DEFAULT_NSAMPLES[parsed.layout] if nsamples is None else nsamples
    if nsamples < 1 or seqlen < 2:
        raise UserError("calibration needs --nsamples >= 1 and --seqlen >= 2")
    rng = random.Random(seed)
    if parsed.layout == "demonstrations":
        if shots < 1:
            raise UserError("demonstrations need at least one shot: --shots 1 or more")
        rows, source = _demonstrations(parsed, tokenizer, nsamples, shots, rng)
        return _pad(rows, [source], tokenizer, seqlen, recipe, seed, "-".join(parsed.languages))
    if parsed.kind == "file":
        units = read_local(Path(parsed.path).expanduser(), parsed.languages[0] if parsed.languages else None)
        texts = [u.text for u in units]
        source = {"name": "file", "path": parsed.path, "language": (parsed.languages or (None,))[0]}
        groups = [(source, text_windows(tokenizer, texts, seqlen), nsamples, {"documents": len(texts)})]
    else:
        languages = parsed.languages
        counts = shares(nsamples, list(parsed.weights or [1.0] * len(languages)))
        groups = []
        for index, (lang, share) in enumerate(zip(languages, counts)):
            corpus = parsed.corpus_of(index)
            source = {"name": corpus, "language": lang}
            if parsed.weights:
                source["weight"] = parsed.weights[index]
            if corpus == GENERATED:
                rows, record = generate_rows(model, tokenizer, lang, share, seqlen, seed)
                groups.append((source, rows, share, record))
            else:
                texts = calibration_texts(corpus, lang, seed, part)
                groups.append((source, text_windows(tokenizer, texts, seqlen), share, {"documents": len(texts)}))
    return _assemble(groups, seqlen, rng, recipe, seed)


def load_tokens(path: Path) -> CalibrationSet:
    """Pre-tokenized calibration from a ``torch.save`` file: an ids tensor or a dict with input_ids/attention_mask."""
    if not Path(path).is_file():
        raise UserError(f"token file {path} does not exist")
    try:
        value = torch.load(path, weights_only=True)
    except Exception as exc:
        raise UserError(f"token file {path} is not a torch-saved tensor or dict ({type(exc).__name__})") from None
    if isinstance(value, dict) and "input_ids" in value:
        ids, mask = value["input_ids"], value.get("attention_mask")
    elif isinstance(value, torch.Tensor):
        ids, mask = value, None
    else:
        raise UserError(f"token file {path} must hold an (n x seqlen) ids tensor or a dict with input_ids")
    for what, tensor in (("input_ids", ids), ("attention_mask", mask)):
        if tensor is not None and (
            not isinstance(tensor, torch.Tensor) or tensor.is_floating_point() or tensor.is_complex()
        ):
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise UserError(
                f"token file {path}: {what} must be an integer tensor, not {kind}; save token ids as torch.long"
            )
    return CalibrationSet.from_tokens(ids, mask)


def check_fits(calibration: CalibrationSet, model, what: str = "calibration") -> None:
    """Refuse token ids outside the model's vocabulary and sequences longer than its positions."""
    vocabulary = model.get_input_embeddings().num_embeddings
    low, high = int(calibration.input_ids.min()), int(calibration.input_ids.max())
    if low < 0 or high >= vocabulary:
        raise UserError(
            f"{what} has token ids from {low} to {high}, outside the model's vocabulary of {vocabulary}: "
            "tokenize with this model's tokenizer"
        )
    check_seqlen(calibration.input_ids.shape[1], model, what)


def check_seqlen(seqlen: int, model, what: str = "calibration") -> None:
    """Refuse sequences longer than the model's position embeddings cover."""
    positions = max_positions(model.config)
    if positions is not None and seqlen > positions:
        raise UserError(
            f"{what} sequences of {seqlen} tokens are longer than the model's {positions} positions: "
            f"lower --seqlen to {positions} or less"
        )


def max_positions(config) -> int | None:
    """The longest sequence a model's position embeddings cover, where its config says so."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def calibration_texts(corpus: str, language: str, seed: int, part: str = "calibration") -> list[str]:
    """Texts of one language from the calibration part (or its fitting part) of a corpus, shuffled by seed."""
    texts = [u.text for u in get_corpus(corpus).units(language, part)]
    random.Random(seed).shuffle(texts)
    return texts


def evaluation_texts(language: str, corpus: str = DEFAULT_CORPUS) -> list[str]:
    """The held-out part of a corpus for one language, in a fixed order."""
    return [u.text for u in get_corpus(corpus).units(language, "evaluation")]


def from_texts(texts: list[str], tokenizer, nsamples: int = 128, seqlen: int = 512, seed: int = 0) -> CalibrationSet:
    """A calibration set from the caller's own texts (in memory)."""
    groups = [({"name": "texts", "documents": len(texts)}, text_windows(tokenizer, list(texts), seqlen), nsamples, {})]
    return _assemble(groups, seqlen, random.Random(seed), "texts", seed)


def _assemble(groups, seqlen: int, rng: random.Random, recipe: str, seed: int) -> CalibrationSet:
    """Sample each group's share of its windows with the seed; a group is (source, windows, share, what to record
    after the counts)."""
    rows, sources, shortfalls, languages = [], [], [], []
    for source, windows, share, record in groups:
        available = len(windows)
        if len(windows) > share:
            windows = [windows[i] for i in sorted(rng.sample(range(len(windows)), share))]
        if len(windows) < share:
            shortfalls.append(
                f"{source.get('language') or source.get('path') or source['name']}: {len(windows)} of {share}"
            )
        rows += windows
        languages += [source.get("language")] * len(windows)
        sources.append(
            {
                **source,
                "sequences": len(windows),
                "tokens": len(windows) * seqlen,
                "available_sequences": available,
                **record,
            }
        )
    if not rows:
        raise UserError(
            f"calibration {recipe!r} gave no sequence of {seqlen} tokens: not enough text; "
            "lower --seqlen or choose a larger corpus with @CORPUS"
        )
    if shortfalls:
        warnings.warn(
            f"text ran out, fewer sequences of {seqlen} tokens than asked ({'; '.join(shortfalls)})", stacklevel=2
        )
    ids = torch.tensor(rows, dtype=torch.long)
    return CalibrationSet(ids, torch.ones_like(ids), sources, recipe, seed, "windows", languages)


def _demonstrations(parsed: Recipe, tokenizer, count: int, shots: int, rng: random.Random):
    """``count`` demonstrations of ``shots`` shots each, as token ids: BOS, then per shot its text and EOS."""
    corpus = get_corpus(parsed.corpus)
    if parsed.kind == "mt":
        source, target = parsed.languages
        pool = corpus.pairs(source, target, "calibration")
        names = (english_name(source), english_name(target))
    else:
        (source,) = parsed.languages
        pool = [(u.text, None) for u in corpus.units(source, "calibration")]
        names = (english_name(source), None)
    if len(pool) < shots:
        raise UserError(
            f"{parsed.corpus} has {len(pool)} calibration texts for {'-'.join(parsed.languages)}, fewer "
            f"than {shots} shots: lower --shots or choose a larger corpus with @CORPUS"
        )
    if tokenizer.eos_token_id is None:
        raise UserError("demonstrations end every shot with EOS, but this tokenizer has no eos_token")
    rows = [demonstration_ids(tokenizer, rng.sample(pool, shots), *names) for _ in range(count)]
    source_summary = {
        "name": parsed.corpus,
        "languages": list(parsed.languages),
        "language": None,
        "demonstrations": count,
        "shots": shots,
        "available_pairs": len(pool),
    }
    return rows, source_summary


def _pad(rows, sources, tokenizer, seqlen: int, recipe: str, seed: int, language: str) -> CalibrationSet:
    """Right-pad (masked) or cut each demonstration to exactly ``seqlen`` tokens."""
    cut = sum(len(r) > seqlen for r in rows)
    if cut:
        warnings.warn(
            f"{cut} of {len(rows)} demonstrations are longer than --seqlen {seqlen} and were cut", stacklevel=2
        )
    pad = pad_id(tokenizer)
    ids = torch.full((len(rows), seqlen), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), seqlen), dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:seqlen]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    for source in sources:
        source.update(sequences=len(rows), tokens=int(mask.sum()), cut=cut)
    return CalibrationSet(ids, mask, sources, recipe, seed, "demonstrations", [language] * len(rows))
