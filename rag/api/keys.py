"""API keys: named, several at once, stored as SHA-256 hashes only, added, listed and revoked from the CLI.

A key is 32 random bytes (`vmt_` + URL-safe base64). A fast hash is enough at that entropy — nobody can search
2^256 keys — whereas scrypt/bcrypt, made for guessable passwords, would cost every request tens of milliseconds.
The file is re-read when it changes, so a key added or revoked with the CLI applies to running servers too.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from rag.errors import VimathError

KEY_PREFIX = "vmt_"
_NAME = re.compile(r"^[\w.@-]{1,64}$")
_FORMAT_VERSION = 1


class KeyFileError(VimathError, ValueError):
    """The keys file cannot be read or a key operation is impossible."""


@dataclass(frozen=True)
class StoredKey:
    """What the file keeps of a key: never the key itself."""

    name: str
    sha256: str
    hint: str  # the first characters, so that a person can tell keys apart (4 random characters reveal nothing usable)
    created_at: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    """The keys file; lookups are thread-safe and follow changes to the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: list[StoredKey] = []

    def _read(self) -> list[StoredKey]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [StoredKey(**entry) for entry in data.get("keys", [])]
        except (OSError, ValueError, TypeError) as exc:
            raise KeyFileError(f"Cannot read the API keys file {self.path}: {exc}") from exc

    def keys(self) -> list[StoredKey]:
        """The current keys, re-read when the file's modification time or size changed."""
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._keys, self._stamp = self._read(), stamp
            return list(self._keys)

    def verify(self, key: str) -> str | None:
        """The name of the key, or None when it is not a current key (compared in constant time)."""
        digest = hash_key(key)
        name = None
        for stored in self.keys():
            if hmac.compare_digest(digest, stored.sha256):
                name = stored.name
        return name

    def _write(self, keys: list[StoredKey]) -> None:
        """Atomically, readable by the owner only: a reader sees the old file or the new one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": _FORMAT_VERSION, "keys": [asdict(k) for k in keys]}, indent=2, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, name: str) -> str:
        """Create a key called `name` and return it: the only time it is ever shown."""
        if not _NAME.fullmatch(name):
            raise KeyFileError(f"Key name {name!r}: use 1-64 letters, digits, '_', '-', '.', '@' (e.g. moodle-lop12).")
        keys = self._read()
        if any(k.name == name for k in keys):
            raise KeyFileError(f"A key named {name!r} exists already; revoke it first or choose another name.")
        key = new_key()
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write([*keys, StoredKey(name, hash_key(key), key[: len(KEY_PREFIX) + 4], created)])
        return key

    def revoke(self, name: str) -> None:
        keys = self._read()
        if not any(k.name == name for k in keys):
            known = ", ".join(k.name for k in keys) or "none"
            raise KeyFileError(f"No key named {name!r} in {self.path} (keys: {known}).")
        self._write([k for k in keys if k.name != name])
