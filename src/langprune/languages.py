"""Language codes (ISO 639-1) and their English names, as used in prompt templates.

The translation-feature paper writes demonstrations with English language
names ("French: ...", "English: ..."), so every language a corpus offers
needs a name here. Adding a language is adding a line; a language with seed
phrases can also calibrate on text the model writes itself (``gen:LANG``).
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
    "yo": "Yoruba",
    "zh": "Chinese",
}

# Everyday openings, written by hand, that start self-generated calibration (``gen:LANG``) in a language and its
# script. They are prompts only, never calibration text themselves, and deliberately not from any corpus here
# (UDHR's held-out articles evaluate), so that ``gen:sw`` measured against ``mono:sw`` is what a language without
# a corpus would get. Adding a language to generate in is adding a line of three or four phrases.
SEED_PHRASES = {
    "hi": ("आज सुबह मैं बाज़ार गया", "हमारे गाँव में", "बहुत से बच्चे", "कल रात बारिश हुई"),
    "sw": ("Leo asubuhi nilienda sokoni", "Katika kijiji chetu", "Watoto wengi wanapenda", "Mvua ilinyesha usiku"),
    "yo": ("Ní àárọ̀ òní mo lọ sí ọjà", "Nínú abúlé wa", "Ọ̀pọ̀lọpọ̀ àwọn ọmọdé fẹ́ràn", "Òjò rọ̀ ní alẹ́ àná"),
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
