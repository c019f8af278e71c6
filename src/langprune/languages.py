"""Language codes (ISO 639-1) and their English names, as used in prompt templates.

The translation-feature paper writes demonstrations with English language
names ("French: ...", "English: ..."), so every language a corpus offers
needs a name here. Adding a language is adding a line.
"""

from __future__ import annotations

from .errors import UserError, did_you_mean

NAMES = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "cs": "Czech",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "sw": "Swahili",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "vi": "Vietnamese",
    "zh": "Chinese",
}


def check_language(code: str, available=None, where: str = "") -> str:
    """Return ``code`` if known (and offered by ``available``), else raise a one-line error."""
    if code not in NAMES:
        raise UserError(
            f"unknown language code {code!r}{did_you_mean(code, NAMES)}: use ISO 639-1 codes such as en, de, zh"
        )
    if available is not None and code not in available:
        raise UserError(f"{where or 'this corpus'} has no language {code!r}; it has {', '.join(sorted(available))}")
    return code


def english_name(code: str) -> str:
    return NAMES[check_language(code)]
