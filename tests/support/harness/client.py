"""A small HTTP client for a running ComfyUI server: queue prompts, wait for results, interrupt, free."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any


class ComfyError(RuntimeError):
    """ComfyUI answered, but not with what the caller needed."""


class PromptRejected(ComfyError):
    """POST /prompt refused the prompt (validation failed); `node_errors` is ComfyUI's per-node report."""

    def __init__(self, message: str, error: dict, node_errors: dict):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors


class PromptFailed(ComfyError):
    """The prompt ran and a node raised; `details` is ComfyUI's execution_error message."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


class PromptInterrupted(PromptFailed):
    """The prompt was stopped by an interrupt."""


def describe_rejection(body: dict) -> str:
    """One readable text out of ComfyUI's {"error": ..., "node_errors": ...} answer."""
    error = body.get("error") or {}
    lines = [f"ComfyUI rejected the prompt: {error.get('message', error)} {error.get('details', '')}".rstrip()]
    for node_id, report in (body.get("node_errors") or {}).items():
        for item in report.get("errors", []):
            lines.append(f"  node {node_id} ({report.get('class_type')}): {item.get('message')}: {item.get('details')}")
    return "\n".join(lines)


def describe_failure(details: dict) -> str:
    """One readable text out of an execution_error message, ending with the node's traceback."""
    trace = "".join(details.get("traceback") or [])
    return (
        f"node {details.get('node_id')} ({details.get('node_type')}) raised "
        f"{details.get('exception_type')}: {details.get('exception_message')}\n{trace}"
    ).rstrip()


class ComfyClient:
    """Talks to one ComfyUI server at `base_url` (e.g. http://127.0.0.1:8188)."""

    def __init__(self, base_url: str, request_timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.client_id = uuid.uuid4().hex

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, bytes]:
        """Send one request; returns (status, body bytes) for any HTTP status, raises only when nothing answered."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str) -> Any:
        """GET a JSON endpoint, raising ComfyError on a non-200 answer."""
        status, raw = self.request("GET", path)
        if status != 200:
            raise ComfyError(f"GET {path} answered HTTP {status}: {raw[:500]!r}")
        return json.loads(raw)

    def object_info(self, node_type: str | None = None) -> dict:
        """GET /object_info (all node schemas) or the one of `node_type`."""
        if node_type is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{urllib.parse.quote(node_type)}").get(node_type, {})

    def models(self, folder: str) -> list[str]:
        """GET /models/<folder>: the file names ComfyUI lists there now (it re-scans changed folders)."""
        return self.get_json(f"/models/{urllib.parse.quote(folder)}")

    def queue(self, prompt: dict, front: bool = False) -> str:
        """POST an API-format prompt; returns its prompt_id or raises PromptRejected with ComfyUI's node_errors."""
        status, raw = self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id, "front": front})
        body = json.loads(raw) if raw else {}
        if status != 200:
            raise PromptRejected(describe_rejection(body), body.get("error") or {}, body.get("node_errors") or {})
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of a finished prompt, or None while it is queued or running."""
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.25) -> dict:
        """Wait until the prompt finished; returns its outputs ({node_id: {...}}) or raises PromptFailed / TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and (entry.get("status") or {}).get("completed") is not None:
                return self._outputs_or_raise(prompt_id, entry)
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s (queue: {self.queue_state()})")
            time.sleep(poll)

    def _outputs_or_raise(self, prompt_id: str, entry: dict) -> dict:
        status = entry["status"]
        if status.get("status_str") == "success":
            return entry.get("outputs", {})
        messages = dict((event, data) for event, data in status.get("messages", []))
        if "execution_interrupted" in messages:
            raise PromptInterrupted(f"prompt {prompt_id} was interrupted", messages["execution_interrupted"])
        details = messages.get("execution_error", {})
        raise PromptFailed(f"prompt {prompt_id} failed: {describe_failure(details)}", details)

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue a prompt and wait for its outputs."""
        return self.wait(self.queue(prompt), timeout=timeout)

    def queue_state(self) -> dict:
        """GET /queue: how many prompts are running and pending."""
        body = self.get_json("/queue")
        return {"running": len(body.get("queue_running", [])), "pending": len(body.get("queue_pending", []))}

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stop the running prompt (only `prompt_id`, if given)."""
        self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free: ComfyUI's "Unload models" / "Free memory" (acted on after the current prompt)."""
        self.request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})

    def view(self, filename: str, subfolder: str = "", kind: str = "output") -> bytes:
        """GET /view: the bytes of one file ComfyUI wrote (kind: output, input or temp)."""
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": kind})
        status, raw = self.request("GET", f"/view?{query}")
        if status != 200:
            raise ComfyError(f"GET /view {filename!r} (subfolder {subfolder!r}, {kind}) answered HTTP {status}")
        return raw


def output_files(outputs: dict) -> list[dict]:
    """Every file entry ({filename, subfolder, type}) in a prompt's outputs, across images/videos/gifs/etc."""
    found = []
    for node_output in outputs.values():
        for items in node_output.values():
            if isinstance(items, list):
                found.extend(i for i in items if isinstance(i, dict) and "filename" in i)
    return found
