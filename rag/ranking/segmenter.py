"""Vietnamese word segmentation exactly as pyvi's `ViTokenizer.tokenize`, without importing scikit-learn.

Why: `from pyvi import ViTokenizer` unpickles a `sklearn_crfsuite.CRF`, which imports scikit-learn and SciPy
(measured here: 2.6 s and ~200 MB), although the model is a plain CRFsuite file that `pycrfsuite` (a small C
extension, ~20 ms) tags directly. Every question is segmented for BM25, so that import used to be most of a cold
hybrid search. This module reads pyvi's own model files (its `words.txt` and the CRFsuite bytes inside
`pyvi3.pkl`, unpickled with a loader that admits only the few classes the file names) and repeats pyvi 0.1.1's
features and joining rules; tests/test_lexical_store.py checks it gives pyvi's output on every sample lesson.
"""
from __future__ import annotations

import pickle
import re
import string
import threading
import unicodedata
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any


def _pyvi_models() -> Path:
    spec = find_spec("pyvi")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pyvi is not installed (pip install pyvi): BM25 needs its Vietnamese word segmentation model")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class _State:
    """Stands for sklearn_crfsuite's CRF, FileResource (and the training log) while unpickling: keeps their attributes, runs nothing."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _ModelUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(("sklearn_crfsuite", "pycrfsuite._logparser")):  # training-time objects
            return _State
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in pyvi's model")


_keep: list[bytes] = []


@lru_cache(maxsize=1)
def _model() -> tuple[Any, frozenset[str], frozenset[str]]:
    """The CRFsuite tagger and pyvi's bi-gram and tri-gram word lists, loaded once per process."""
    import pycrfsuite

    models = _pyvi_models()
    with open(models / "pyvi3.pkl", "rb") as fin:
        crf = _ModelUnpickler(fin).load()
    tagger = pycrfsuite.Tagger()
    _keep.append(crf.modelfile.__FILE_RESOURCE_DATA__)  # open_inmemory reads these bytes in place: they must outlive it
    tagger.open_inmemory(_keep[-1])
    bi_grams, tri_grams = set(), set()
    for token in (models / "words.txt").read_text(encoding="utf-8").split("\n"):
        size = len(token.split(" "))
        if size == 2:
            bi_grams.add(token)
        elif size == 3:
            tri_grams.add(token)
    return tagger, frozenset(bi_grams), frozenset(tri_grams)


_tag_lock = threading.Lock()  # one CRFsuite tagger per process; it is not documented as thread-safe

_SYLLABLE = re.compile("(" + "|".join([
    r"[A-ZĐ]+\.", r"Tp\.", r"Mr\.", r"Mrs\.", r"Ms\.", r"Dr\.", r"ThS\.",  # abbreviations
    "==>", "->", r"\.\.\.", ">>", "\n",  # specials
    r"\w+://[^\s]+", r"([a-zA-Z0-9_.+-]+@([a-zA-Z0-9-]+\.)+[a-zA-Z0-9-]+)",  # web, email
    r"\d+([\.,_]\d+)+", r"[^\w\s]", r"\w+",  # digits, non-word, word
]) + ")", re.UNICODE)


def syllables(text: str) -> list[str]:
    return [match[0] for match in _SYLLABLE.findall(unicodedata.normalize("NFC", text))]


def _features(sent: list[str], i: int, bi_grams: frozenset[str], tri_grams: frozenset[str]) -> dict[str, Any]:
    word = sent[i]
    features: dict[str, Any] = {"bias": 1.0, "word.lower()": word.lower(), "word.isupper()": word.isupper(),
                                "word.istitle()": word.istitle(), "word.isdigit()": word.isdigit()}
    if i > 0:
        word1 = sent[i - 1]
        features.update({"-1:word.lower()": word1.lower(), "-1:word.istitle()": word1.istitle(),
                         "-1:word.isupper()": word1.isupper(),
                         "-1:word.bi_gram()": " ".join([word1, word]).lower() in bi_grams})
        if i > 1:
            features["-2:word.tri_gram()"] = " ".join([sent[i - 2], word1, word]).lower() in tri_grams
    if i < len(sent) - 1:
        word1 = sent[i + 1]
        features.update({"+1:word.lower()": word1.lower(), "+1:word.istitle()": word1.istitle(),
                         "+1:word.isupper()": word1.isupper(),
                         "+1:word.bi_gram()": " ".join([word, word1]).lower() in bi_grams})
        if i < len(sent) - 2:
            features["+2:word.tri_gram()"] = " ".join([word, word1, sent[i + 2]]).lower() in tri_grams
    return features


def tokenize(text: str) -> str:
    """pyvi's `ViTokenizer.tokenize`: syllables of one word joined by "_", words by spaces."""
    tokens = syllables(text)
    if not tokens:
        return text
    tagger, bi_grams, tri_grams = _model()
    features = [_features(tokens, i, bi_grams, tri_grams) for i in range(len(tokens))]
    with _tag_lock:
        labels = tagger.tag(features)
    output = tokens[0]
    for i in range(1, len(labels)):
        joined = (labels[i] == "I_W" and tokens[i] not in string.punctuation and tokens[i - 1] not in string.punctuation
                  and not tokens[i][0].isdigit() and not tokens[i - 1][0].isdigit()
                  and not (tokens[i][0].istitle() and not tokens[i - 1][0].istitle()))
        output += ("_" if joined else " ") + tokens[i]
    return output
