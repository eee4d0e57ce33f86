"""`POST /v1/search`: the ranked chunks for a question, without the LLM."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from rag.api.deps import caller, check_question, service
from rag.api.schemas import Chunk, SearchRequest, SearchResponse
from rag.api.service import TutorService

router = APIRouter(tags=["tutor"])


@router.post("/v1/search", response_model=SearchResponse, summary="Ranked chunks of the lesson material")
async def search(body: SearchRequest, svc: TutorService = Depends(service), _: str = Depends(caller)) -> SearchResponse:
    check_question(svc.settings, body.question)
    k = body.k or svc.settings.top_k
    filters = await svc.in_pool(svc.retrieval_pool, svc.scope, body.filters.model_dump())
    hits = await svc.search(body.question, k, filters)
    return SearchResponse(query=body.question, k=k, results=[Chunk.of(h, r) for r, h in enumerate(hits, start=1)])
