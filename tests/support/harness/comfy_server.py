"""Boots a real ComfyUI (headless, CPU) with this pack linked into a throw-away base directory, and always stops it."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import ComfyClient, ComfyError

REPO_ROOT = Path(__file__).resolve().parents[3]
PACK_NAME = "ComfyUI-WanMoE"
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras", "upscale_models")
COMFYUI_DIR_ENV = "WANMOE_COMFYUI_DIR"
FRONTEND_ROOT_ENV = "WANMOE_FRONTEND_ROOT"  # a frontend's static folder, passed as --front-end-root


class ComfyBootError(ComfyError):
    """ComfyUI could not be found, did not start, or died; the message carries the log tail."""


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() and atexit still stop the server


def find_comfyui(explicit: str | os.PathLike | None = None) -> Path:
    """ComfyUI's source folder: `explicit`, else $WANMOE_COMFYUI_DIR, else the one scripts/setup.sh unpacks."""
    chosen = explicit or os.environ.get(COMFYUI_DIR_ENV) or REPO_ROOT / ".cache" / "comfyui"
    path = Path(chosen).expanduser().resolve()
    if not (path / "main.py").is_file():
        raise ComfyBootError(
            f"No ComfyUI found at {path} (expected its main.py there). Run `make setup` (bash scripts/setup.sh) "
            f"to unpack ComfyUI 0.3.75 into .cache/comfyui, or set {COMFYUI_DIR_ENV} to your ComfyUI checkout."
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_directory(base: Path, pack_dir: Path = REPO_ROOT) -> Path:
    """Lay out a ComfyUI base directory (custom_nodes with this pack linked in, model folders, input/output/user)."""
    for sub in ("custom_nodes", "input", "output", "temp", "user/default", *(f"models/{m}" for m in MODEL_FOLDERS)):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(pack_dir, target_is_directory=True)
    return base


class ComfyServer:
    """One ComfyUI process: `with ComfyServer() as server: server.client.run(prompt)`; stopped on exit, always."""

    def __init__(
        self,
        base_dir: str | os.PathLike | None = None,
        comfy_dir: str | os.PathLike | None = None,
        python: str = sys.executable,
        extra_args: tuple[str, ...] = (),
        boot_timeout: float = 300.0,
        frontend_settings: dict | None = None,
        env: dict[str, str] | None = None,
        cpu: bool = True,
    ):
        self.comfy_dir = find_comfyui(comfy_dir)
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="wanmoe-comfy-"))
        self.python = python
        frontend_root = os.environ.get(FRONTEND_ROOT_ENV)
        if frontend_root and "--front-end-root" not in extra_args:
            extra_args = (*extra_args, "--front-end-root", str(Path(frontend_root).expanduser().resolve()))
        self.extra_args = tuple(extra_args)
        self.boot_timeout = boot_timeout
        self.frontend_settings = frontend_settings
        self.env = env or {}
        self.cpu = cpu
        self.port = 0
        self._client: ComfyClient | None = None
        self.process: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self._log_file = None
        make_base_directory(self.base_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def user_dir(self) -> Path:
        return self.base_dir / "user"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    @property
    def client(self) -> ComfyClient:
        """The HTTP client of this server (one per boot)."""
        if self._client is None or self._client.base_url != self.url:
            self._client = ComfyClient(self.url)
        return self._client

    def command(self) -> list[str]:
        """The command line that starts ComfyUI."""
        return [
            self.python, str(self.comfy_dir / "main.py"),
            *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
            "--base-directory", str(self.base_dir),
            "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
            "--user-directory", str(self.user_dir),
            "--database-url", f"sqlite:///{self.user_dir / 'comfyui.db'}",
            *self.extra_args,
        ]

    def start(self) -> "ComfyServer":
        """Start ComfyUI and wait until /object_info answers; raises ComfyBootError with the log tail otherwise."""
        if self.frontend_settings is not None:
            from .browser import write_frontend_settings
            write_frontend_settings(self.user_dir, self.frontend_settings)
        self.port = free_port()
        self._log_file = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), cwd=self.comfy_dir, stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)  # also when the interpreter exits without reaching stop()
        try:
            self._wait_until_ready(started)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def _wait_until_ready(self, started: float) -> None:
        client = ComfyClient(self.url, request_timeout=10)
        while True:
            if self.process.poll() is not None:
                raise ComfyBootError(
                    f"ComfyUI exited with code {self.process.returncode} while starting "
                    f"({' '.join(self.command())}). Log tail:\n{self.log_tail()}"
                )
            try:
                status, _ = client.request("GET", "/object_info")
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() - started > self.boot_timeout:
                raise ComfyBootError(
                    f"ComfyUI did not answer /object_info within {self.boot_timeout:.0f} s. Log tail:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 15.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after `grace` seconds); safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(timeout=grace)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        # The server runs in its own session (start_new_session), so its group holds only what it started.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def cleanup(self) -> None:
        """Stop and delete the base directory if this object created it."""
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """Everything ComfyUI printed so far."""
        if self._log_file is not None:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines of ComfyUI's output."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def add_model(self, folder: str, source: str | os.PathLike | bytes, name: str | None = None, link: bool = True) -> Path:
        """Put a model file into models/<folder>/ (symlinked or copied from a path, or written from bytes); works before or after boot."""
        if folder not in MODEL_FOLDERS:
            raise ValueError(f"Unknown model folder {folder!r}; expected one of {', '.join(MODEL_FOLDERS)}.")
        if isinstance(source, bytes):
            if not name:
                raise ValueError("add_model(bytes) needs a file name.")
            target = self.models_dir / folder / name
            target.write_bytes(source)
            return target
        source = Path(source).resolve()
        target = self.models_dir / folder / (name or source.name)
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            target.symlink_to(source)
        else:
            shutil.copy2(source, target)
        return target

    @contextlib.contextmanager
    def absent_model(self, folder: str, name: str):
        """Within the block, models/<folder>/<name> does not exist (a file another test left is set aside, then put back).

        For tests whose expectation is that a file is missing: they pass alone and after any other test.
        """
        target = self.models_dir / folder / name
        # Out of models/ altogether: ComfyUI lists every *.safetensors in a model folder, hidden names included.
        aside = self.base_dir / "aside" / folder / name
        moved = target.exists() or target.is_symlink()
        if moved:
            aside.parent.mkdir(parents=True, exist_ok=True)
            target.rename(aside)
        try:
            yield target
        finally:
            if moved:
                aside.rename(target)

    def output_path(self, entry: dict) -> Path:
        """Where a prompt output entry ({filename, subfolder, type}) lies on disk."""
        root = {"output": self.output_dir, "input": self.input_dir, "temp": self.base_dir / "temp"}[entry.get("type", "output")]
        return root / entry.get("subfolder", "") / entry["filename"]

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


# The pack's deliberate stops: a node raising one of these is the designed outcome of a check (the prompt filter in
# block mode, frame moderation in block mode, an LLM rewrite that lost the subject with on_subject_lost "error",
# a request refused before it starts because it cannot fit in memory, a value refused when its node runs: InputRefused),
# worded for the user. ComfyUI prints a
# traceback for every exception a node raises; these are not bugs.
DELIBERATE_STOPS = re.compile(r"\.(PromptBlocked|ModerationBlocked|SubjectLost|NotEnoughMemoryError|InputRefused): ")


def pack_load_report(log: str) -> dict:
    """What ComfyUI's log says about this pack: loaded, import failed, tracebacks that mention it (bugs), and the
    deliberate stops (`stops`: tracebacks ending in one of DELIBERATE_STOPS)."""
    import_lines = [l for l in log.splitlines() if "seconds" in l and f"custom_nodes/{PACK_NAME}" in l]
    ours = [t for t in _tracebacks(log) if PACK_NAME in t or "wan_core" in t]
    stops = [t for t in ours if DELIBERATE_STOPS.search(t.splitlines()[-1])]
    tracebacks = [t for t in ours if t not in stops]
    return {
        "import_lines": import_lines,
        "loaded": any("IMPORT FAILED" not in l for l in import_lines),
        "import_failed": any("IMPORT FAILED" in l for l in import_lines)
        or any("IMPORT FAILED" in l and PACK_NAME in l for l in log.splitlines()),
        "tracebacks": tracebacks,
        "stops": stops,
    }


def _tracebacks(log: str) -> list[str]:
    """Each Python traceback in a log: the header, its indented frame lines and the exception line."""
    found, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            current = [line]
        elif current is not None:
            current.append(line)
            if not line.startswith(" "):
                found.append("\n".join(current))
                current = None
    return found
