"""Opening the index together with the embedder it needs, as every entry point (CLI, UI, evaluation) does."""
from __future__ import annotations

from rag import profiling
from rag.embedder_loading import load_embeddings
from rag.embeddings import E5Embeddings, EmbedderIdentity
from rag.index import LessonIndex, make_client, recorded_identity
from rag.ranking import make_ranker as make_method_ranker
from rag.ranking.base import Ranker
from rag.retrieval import Searcher
from rag.settings import Settings


def embedder_chosen(settings: Settings) -> bool:
    """Whether the user named an embedder (flag, env or file) rather than leaving the default."""
    return "embedder" in settings.model_fields_set


def embed_backend(settings: Settings, recorded: EmbedderIdentity | None) -> str:
    """The backend asked for; else the one an index's vectors need (an int8 index needs int8 queries); else auto."""
    if "embed_backend" in settings.model_fields_set or recorded is None or recorded.variant is None:
        return settings.embed_backend
    return recorded.variant


def open_index(settings: Settings, *, rebuild: bool = False, create: bool = True, announce: bool = True,
               bulk: int = 0) -> tuple[LessonIndex, E5Embeddings]:
    """The index and its embedder: the one that built the index unless the user chose one (`bulk`: the bytes of
    lesson text an ingest will embed)."""
    with profiling.stage("index open"):
        recorded = None if rebuild else recorded_identity(make_client(settings), settings.collection)
    use_recorded = recorded is not None and not embedder_chosen(settings)
    spec = recorded.spec if use_recorded else settings.embedder
    with profiling.stage("model load"):
        embeddings = load_embeddings(spec, hub_timeout_s=settings.hub_timeout_s, batch_size=settings.embed_batch_size,
                                     announce=announce, reason="the embedder that built this index" if use_recorded else None,
                                     backend=embed_backend(settings, recorded), bulk=bulk)
    with profiling.stage("index open"):
        index = LessonIndex.open(settings, embeddings.identity, rebuild=rebuild, create=create)
    return index, embeddings


def make_ranker(settings: Settings, index: LessonIndex, embeddings: E5Embeddings) -> Ranker:
    """The ranker the settings ask for (rag.ranking.RANKERS names them; all score hits by dense cosine)."""
    with profiling.stage("lexical load" if settings.retrieval_method != "dense" else "ranker open"):
        return make_method_ranker(settings.retrieval_method, index, embeddings)


def open_searcher(settings: Settings, *, announce: bool = True) -> Searcher:
    """A searcher over an existing index (raises IndexMissing when there is none)."""
    index, embeddings = open_index(settings, create=False, announce=announce)
    return Searcher(make_ranker(settings, index, embeddings))
