"""A real Label Studio server on a loopback port, for integration tests.

The server runs from its own virtual environment (Label Studio pins Django and friends,
which must not mix with the project's packages), in a throw-away data directory with a
SQLite database. Startup costs are dominated by Django migrations (about half a minute),
so the migrated, user-less database is kept in a cache keyed by the installation and
copied into each new data directory; later starts then take a few seconds.

The API token is chosen here and handed to the server with `--user-token` together with
`--enable-legacy-api-token`: Label Studio 1.23 creates the organisation with legacy tokens
enabled and stores our token for the user, so no login round-trip is needed and
label-studio-sdk accepts the token as is (`Authorization: Token ...`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN_ENV = "LABELLOOP_LABEL_STUDIO_BIN"
CACHE_ENV = "LABELLOOP_LABEL_STUDIO_CACHE"  # a folder, or "off" to migrate every time
DB_NAME = "label_studio.sqlite3"

# Variables Label Studio reads with or without a prefix; inherited values would change
# the host, port, user or database of the test server.
_STRIPPED_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_", "DJANGO_", "POSTGRE_", "MYSQL_")
_STRIPPED_NAMES = {
    "HOST",
    "PORT",
    "USERNAME",
    "PASSWORD",
    "USER_TOKEN",
    "DEBUG",
    "LOG_LEVEL",
    "DATABASE_NAME",
    "SENTRY_DSN",
    "FRONTEND_SENTRY_DSN",
}


def find_label_studio_binary() -> str | None:
    """$LABELLOOP_LABEL_STUDIO_BIN, else <repo>/.venv-ls/bin/label-studio, else PATH."""
    explicit = os.environ.get(BIN_ENV)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    local = REPO / ".venv-ls" / "bin" / "label-studio"
    if local.is_file():
        return str(local)
    return shutil.which("label-studio")


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the test process dies without its teardown
    (killed runner), instead of living on in its own session."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


class LabelStudioServer:
    """One `label-studio start` process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        document_root: Path,
        *,
        startup_timeout: float = 240.0,
        username: str = "labelloop@example.com",
    ):
        self.binary = binary
        self.workdir = Path(workdir)
        self.document_root = Path(document_root)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "label-studio.log"
        self.startup_timeout = startup_timeout
        self.username = username
        # Hex only: a urlsafe token may begin with "-", which argparse takes for a flag.
        self.password = "pw" + secrets.token_hex(12)
        self.token = secrets.token_hex(20)  # 40 characters, the size of a legacy key
        self.port = 0
        self.url = ""
        self.startup_seconds = 0.0
        self.used_cached_db = False
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> LabelStudioServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        self._prepare_database()
        self.port = free_port()
        cmd = [
            self.binary,
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--username",
            self.username,
            f"--password={self.password}",
            f"--user-token={self.token}",
            "--enable-legacy-api-token",
            "--log-level",
            "WARNING",
        ]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self._wait_ready(t0 + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return "<no log>"

    # -- internals -------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _STRIPPED_NAMES and not k.startswith(_STRIPPED_PREFIXES)
        }
        venv = Path(self.binary).resolve().parent.parent
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "DJANGO_DB": "sqlite",
                "LOCAL_FILES_SERVING_ENABLED": "true",
                "LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
                # No network: the PyPI version check would stall start-up for minutes.
                "LATEST_VERSION_CHECK": "false",
                # Label Studio describes itself with `git describe` in its package folder;
                # without a ceiling, git walks up into whatever repository holds the venv.
                "GIT_CEILING_DIRECTORIES": str(venv.parent),
                "PYTHONUNBUFFERED": "1",
                # Webhooks go to `labelloop serve` on loopback, an address Label Studio's
                # SSRF guard refuses by default (deployments on a private network set the
                # same, see docker/compose.yml).
                "USE_DEFAULT_BANNED_SUBNETS": "false",
            }
        )
        return env

    def _cache_file(self) -> Path | None:
        setting = os.environ.get(CACHE_ENV, "")
        if setting.lower() == "off":
            return None
        folder = (
            Path(setting)
            if setting
            else (
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "labelloop"
                / "label-studio-db"
            )
        )
        binary = Path(self.binary).resolve()
        venv = binary.parent.parent
        installed = sorted(p.name for p in venv.glob("lib/python*/site-packages/label_studio-*"))
        ident = f"{binary}|{binary.stat().st_mtime_ns}|{'|'.join(installed)}"
        return folder / f"{hashlib.sha256(ident.encode()).hexdigest()[:16]}.sqlite3"

    def _prepare_database(self) -> None:
        """Copy a cached migrated database in, or migrate once and fill the cache."""
        target = self.data_dir / DB_NAME
        cache = self._cache_file()
        if target.exists():
            return
        if cache is not None and cache.is_file():
            shutil.copyfile(cache, target)
            self.used_cached_db = True
            return
        # `label-studio user` applies the migrations, reports that the user is missing
        # and exits: the database is migrated but holds no user or organisation yet.
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [
                    self.binary,
                    "user",
                    "--data-dir",
                    str(self.data_dir),
                    "--username",
                    "nobody@invalid",
                ],
                cwd=self.workdir,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=self.startup_timeout,
                check=False,
            )
        if result.returncode != 0 or not target.is_file():
            raise LabelStudioError(
                f"migrating the Label Studio database failed (exit {result.returncode});"
                f" log {self.log_path}:\n{self.log_tail()}"
            )
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(target, partial)
            os.replace(partial, cache)  # atomic: parallel sessions never read half a file

    def _wait_ready(self, deadline: float) -> None:
        started = re.compile(rb"Starting development server at http://127\.0\.0\.1:(\d+)/")
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise LabelStudioError(
                    f"Label Studio exited during start-up (exit {code}); log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            m = started.search(self.log_path.read_bytes())
            if m:  # Label Studio moves to the next port itself when ours was taken
                self.port = int(m.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                if self._get("/health") == 200:
                    break
            time.sleep(0.2)
        else:
            raise LabelStudioError(
                f"Label Studio not healthy after {self.startup_timeout:.0f} s; log "
                f"{self.log_path}:\n{self.log_tail()}"
            )
        status = self._get("/api/current-user/whoami", auth=True)
        if status != 200:
            raise LabelStudioError(
                f"the API token is not accepted (HTTP {status}); log {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def _get(self, path: str, *, auth: bool = False) -> int:
        req = urllib.request.Request(self.url + path)
        if auth:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0
