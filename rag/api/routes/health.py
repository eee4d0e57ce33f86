"""Liveness and readiness, for process managers and load balancers (no key needed, nothing secret shown)."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from rag.api.deps import service
from rag.api.service import TutorService

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _checks(svc: TutorService) -> dict[str, Any]:
    try:
        chunks = svc.index_size()
        index: dict[str, Any] = {"ok": chunks is None or chunks > 0, "chunks": chunks}
    except Exception as exc:  # a Chroma server that went away is "not ready", with the reason
        index = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    embedder = {"ok": svc.embeddings is not None or svc.index is None,
                "name": svc.embeddings.identity.spec if svc.embeddings is not None else None}
    status = svc.llm_status()
    model = svc.settings.effective_model()
    llm = {"reachable": status.reachable, "model": model, "model_available": status.has_model(model)}
    return {"index": index, "embedder": embedder, "llm": llm}


@router.get("/readyz", summary="Ready to serve: index open, embedder loaded, LLM reachable (or retrieval-only)")
async def readyz(svc: TutorService = Depends(service)) -> JSONResponse:
    checks = await asyncio.get_running_loop().run_in_executor(svc.retrieval_pool, _checks, svc)
    llm_ok = checks["llm"]["reachable"] and checks["llm"]["model_available"]
    ready = checks["index"]["ok"] and checks["embedder"]["ok"] and (llm_ok or not svc.settings.api_require_llm)
    body = {"ready": ready, "mode": "full" if llm_ok else "retrieval_only", **checks,
            "generation": {"slots": svc.gate.slots, "running": svc.gate.running,
                           "waiting": max(svc.gate.admitted - svc.gate.running, 0)}}
    return JSONResponse(body, status_code=200 if ready else 503)
