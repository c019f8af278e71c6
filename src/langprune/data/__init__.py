"""The corpus catalog: every named corpus behind one interface (see ``corpus.Corpus``).

Adding a corpus is adding an entry here; recipes, ``langprune data`` and the
evaluation tasks find it by name.
"""

from ..errors import UserError, did_you_mean
from .bigbench import MultiEmo, WikiLingua, Wikipedia
from .code import PythonCode
from .corpus import Corpus, Example, Unit, split_keys
from .huggingface import MARC, MC4, XNLI, Belebele, Flores
from .libreoffice import LibreOfficeHelp
from .local import read_local
from .mmlu import MMLUDev
from .udhr import UDHR

CATALOG: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in (
        UDHR(),
        LibreOfficeHelp(),
        WikiLingua(),
        Wikipedia(),
        MultiEmo(),
        MMLUDev(),
        PythonCode(),
        Flores(),
        MC4(),
        XNLI(),
        MARC(),
        Belebele(),
    )
}


def usable(corpus: Corpus) -> bool:
    """Fetched already, or fetchable here (registry clients work offline; the Hugging Face hub does not)."""
    from .sources import HubDataset

    return corpus.fetched() or not isinstance(corpus.source, HubDataset)


def text_corpora_with(language: str) -> list[Corpus]:
    """The usable corpora with running text in ``language`` (monolingual or parallel), the catalog's order."""
    return [
        corpus
        for corpus in CATALOG.values()
        if corpus.kind in ("monolingual", "parallel") and language in corpus.languages and usable(corpus)
    ]


def get_corpus(name: str) -> Corpus:
    if name not in CATALOG:
        raise UserError(f"unknown corpus {name!r}{did_you_mean(name, CATALOG)}: see `langprune data list`")
    return CATALOG[name]


__all__ = [
    "CATALOG",
    "Corpus",
    "Example",
    "Unit",
    "get_corpus",
    "read_local",
    "split_keys",
    "text_corpora_with",
    "usable",
]
