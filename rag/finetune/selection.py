"""Model selection by retrieval: validation MRR@10 over every chunk of the lessons, after each epoch.

The loss of in-batch negatives is a proxy that can fall while ranking among all chunks gets worse (it did: the
loss-selected model lost to its base on test). So each epoch the model embeds the whole corpus, as ingest makes it,
and ranks it for the validation questions (sentence-transformers' `InformationRetrievalEvaluator`, cosine, the E5
prefixes); the epoch with the best MRR@10 is kept, and a model that does not beat its base there is not called better.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.embeddings import PREFIXES
from rag.eval.dataset import ChunkView, Question, resolve

SPLIT_NAME = "validation"
METRIC = f"{SPLIT_NAME}_mrr@10"  # what selection maximises (the trainer logs it as eval_<METRIC>)
REPORTED = {"mrr@10": "MRR@10", "accuracy@1": "Acc@1", "accuracy@3": "Hit@3", "accuracy@5": "Hit@5"}


@dataclass(frozen=True)
class ValidationData:
    """The corpus (every chunk), the validation questions and their correct chunk ids."""

    corpus: dict[str, str]
    queries: dict[str, str]
    relevant: dict[str, set[str]]
    unscorable: tuple[str, ...] = ()


def validation_data(questions: Sequence[Question], chunks: Sequence[ChunkView]) -> ValidationData:
    """Questions resolved against the chunks; those whose labels match nothing are left out and named."""
    if any(q.split != SPLIT_NAME for q in questions):
        raise ValueError("model selection uses validation questions only; the test split is for the final table")
    resolved = resolve(questions, chunks)
    scorable = resolved.scorable
    return ValidationData({c.id: c.text for c in chunks}, {q.question.id: q.question.question for q in scorable},
                          {q.question.id: set(q.correct) for q in scorable},
                          tuple(q.question.id for q in resolved.unscorable))


def retrieval_evaluator(data: ValidationData, batch_size: int = 32) -> Any:
    """A sentence-transformers evaluator whose primary metric is METRIC (and a few more, renamed for the card)."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
        SentenceEvaluator,
    )

    inner = InformationRetrievalEvaluator(
        data.queries, data.corpus, data.relevant, name=SPLIT_NAME, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[1, 3, 5], precision_recall_at_k=[5], map_at_k=[10], batch_size=batch_size, write_csv=False,
        main_score_function="cosine", query_prompt=PREFIXES["query"], corpus_prompt=PREFIXES["passage"])

    class ValidationRetrieval(SentenceEvaluator):
        """Only the metrics the card shows, named `validation_mrr@10`, `validation_accuracy@1`…"""

        def __init__(self) -> None:
            super().__init__()
            self.name = SPLIT_NAME
            self.primary_metric = "mrr@10"
            self.greater_is_better = True

        def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            raw = inner(model, output_path=output_path, epoch=epoch, steps=steps)
            metrics = {key: float(raw[f"{SPLIT_NAME}_cosine_{key}"]) for key in REPORTED}
            return self.prefix_name_to_metrics(metrics, self.name)

    return ValidationRetrieval()


def beats_base(best: float | None, base: float | None, min_gain: float = 0.0) -> bool:
    """The guardrail: a fine-tuned model is better only when its validation MRR@10 exceeds its base's."""
    return best is not None and base is not None and best > base + min_gain
