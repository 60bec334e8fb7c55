"""Tokens bound to one session, and revoked when their allocation is released.

oriond admits sessions in forked workers, so what a token has opened must be shared between
processes: it lives in a directory (server.conf ``[controller] token_state_dir``, default
``/run/orion/tokens``, mode 0700):

- ``used/<expiry>-<token id>.<n>``: created with ``O_EXCL`` when a session (or a RENEW) takes
  use ``n`` of a token that allows ``sessions`` uses (the controller issues 1: single use). The
  kernel makes the creation atomic, so two workers can never both take the same use. Names carry
  the token's expiry: entries of expired tokens are removed (a token past its expiry is refused
  anyway).
- ``revoked/<allocation id>``: the allocation was released. **Servers pull the revocation
  list**: the controller answers it with every heartbeat (the registrar asks every
  heartbeat_timeout/3, 5 s by default), rather than pushing to servers, because oriond has no
  control endpoint for the controller to call and a pulled list survives a server that was
  unreachable at the moment of the release. A HELLO or RENEW with a token of a revoked allocation
  is refused; a live session of it is ended at once (its worker gets ``SIGUSR2``: its live entry
  ``live/<allocation id>.<pid>`` names it, and only a child of this oriond is signalled).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Callable

from ..errors import OrionError

_SAFE = re.compile(r"^[A-Za-z0-9._~-]{1,100}$")
REVOKE_SIGNAL = signal.SIGUSR2


class TokenState:
    def __init__(self, root: str | os.PathLike[str], clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.clock = clock
        for sub in ("used", "revoked", "live"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._last_prune = 0.0

    @staticmethod
    def _name(text: str, what: str) -> str:
        if not _SAFE.match(text):
            raise OrionError(f"allocation token refused: malformed {what}")
        return text

    def take(self, token_id: str, expires_at: float, sessions: int) -> int:
        """Take one use of a token; returns its number. ``OrionError`` when all are taken."""
        tid = self._name(token_id, "token id")
        self.prune()
        for n in range(max(1, sessions)):
            p = self.root / "used" / f"{int(expires_at)}-{tid}.{n}"
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return n
            except FileExistsError:
                continue
        raise OrionError(f"allocation token refused: it was already used for {max(1, sessions)} "
                         f"session(s), all it grants (a token opens one session; a replayed "
                         f"token is refused)")

    def is_revoked(self, allocation_id: str) -> bool:
        return _SAFE.match(allocation_id) is not None and \
            (self.root / "revoked" / allocation_id).exists()

    def check(self, allocation_id: str) -> None:
        if self.is_revoked(allocation_id):
            raise OrionError(f"allocation token refused: allocation {allocation_id} was released "
                             f"(its tokens are revoked)")

    def live(self, allocation_id: str, pid: int | None = None) -> None:
        """Record that process ``pid`` (this one) serves a session of ``allocation_id``."""
        aid = self._name(allocation_id, "allocation id")
        (self.root / "live" / f"{aid}.{pid or os.getpid()}").touch(mode=0o600)

    def revoke(self, allocation_ids: list[str], until: float | None = None) -> list[int]:
        """Record revocations (from the controller's heartbeat answer) and signal the workers of
        this process that serve them; returns the pids signalled."""
        signalled = []
        until = until if until is not None else self.clock() + 3600
        for aid in allocation_ids:
            if not _SAFE.match(aid):
                continue
            p = self.root / "revoked" / aid
            if not p.exists():
                p.write_text(f"{until:.0f}\n")
            for entry in (self.root / "live").glob(f"{aid}.*"):
                pid_s = entry.name.rpartition(".")[2]
                if pid_s.isdigit() and _parent_of(int(pid_s)) == os.getpid():
                    try:
                        os.kill(int(pid_s), REVOKE_SIGNAL)
                        signalled.append(int(pid_s))
                    except ProcessLookupError:
                        pass
                entry.unlink(missing_ok=True)
        return signalled

    def prune(self, every: float = 10.0) -> None:
        """Forget used tokens past their expiry, revocations past theirs, live entries of
        processes that are gone (at most every ``every`` seconds)."""
        now = self.clock()
        if now - self._last_prune < every:
            return
        self._last_prune = now
        try:
            for e in os.scandir(self.root / "used"):
                exp = e.name.partition("-")[0]
                if exp.isdigit() and int(exp) < now:
                    os.unlink(e.path)
            for e in os.scandir(self.root / "revoked"):
                try:
                    if float(Path(e.path).read_text() or 0) < now:
                        os.unlink(e.path)
                except (OSError, ValueError):
                    pass
            for e in os.scandir(self.root / "live"):
                pid_s = e.name.rpartition(".")[2]
                if not pid_s.isdigit() or not Path(f"/proc/{pid_s}").exists():
                    os.unlink(e.path)
        except OSError:
            pass


def _parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def on_revoked_signal(allocation_id: str, make_error: Callable[[str], BaseException]) -> None:
    """In a session worker: end the session when oriond signals that its allocation was revoked
    (the error propagates out of the call loop, which answers it to the client and frees the
    session)."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(REVOKE_SIGNAL, signal.SIG_IGN)
        raise make_error(f"allocation {allocation_id} was released with the Orion Controller: its "
                         f"token is revoked and the session is closed")

    try:
        signal.signal(REVOKE_SIGNAL, handler)
    except ValueError:  # not the main thread (in-process tests): revocation applies at HELLO
        pass
