"""The pack loads cleanly into a real ComfyUI: no import failure, no traceback of ours, every declared node served."""

from __future__ import annotations

import ast
import re

import pytest

from harness.comfy_server import PACK_NAME, REPO_ROOT, pack_load_report

pytestmark = pytest.mark.comfy


def declared_node_ids() -> set[str]:
    """Every literal `node_id="..."` in nodes/*.py, the ids the pack's schemas declare."""
    ids = set()
    for path in sorted((REPO_ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.keyword) and node.arg == "node_id" and isinstance(node.value, ast.Constant):
                ids.add(node.value.value)
    return ids


def test_pack_is_listed_as_loaded(comfy_server):
    report = pack_load_report(comfy_server.log_text())
    assert report["import_lines"], f"ComfyUI's log does not list {PACK_NAME} among custom nodes:\n{comfy_server.log_tail()}"
    assert not report["import_failed"], f"{PACK_NAME}: IMPORT FAILED:\n{comfy_server.log_tail()}"
    assert report["loaded"]


def test_no_traceback_mentions_the_pack(comfy_server):
    tracebacks = pack_load_report(comfy_server.log_text())["tracebacks"]
    assert tracebacks == [], "tracebacks from our pack in ComfyUI's log:\n\n" + "\n\n".join(tracebacks)


def test_deliberate_stops_are_told_apart_from_other_tracebacks():
    frame = f'  File "/x/custom_nodes/{PACK_NAME}/wan_core/post/moderate.py", line 1, in act'
    stop = f"Traceback (most recent call last):\n{frame}\n{PACK_NAME}.wan_core.post.moderate.ModerationBlocked: frames 0"
    bug = f"Traceback (most recent call last):\n{frame}\nValueError: ModerationBlocked: is not a stop here"
    report = pack_load_report(f"{stop}\nsome line\n{bug}\n")
    assert report["stops"] == [stop] and report["tracebacks"] == [bug]


def test_every_declared_node_is_served_from_the_pack(comfy_client):
    served = {name: info for name, info in comfy_client.object_info().items()
              if info.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    declared = declared_node_ids()
    assert declared <= set(served), f"declared in nodes/ but not served by ComfyUI: {sorted(declared - set(served))}"
    if any("NODES" in p.read_text() for p in (REPO_ROOT / "nodes").glob("*.py") if p.name != "__init__.py"):
        assert served, f"nodes/ defines NODES lists but ComfyUI serves no node from {PACK_NAME}"


def test_core_nodes_are_served(comfy_client):
    # The harness runs a full ComfyUI, not a stub: core and video nodes the shipped workflows rely on exist.
    info = comfy_client.object_info()
    assert {"KSamplerAdvanced", "EmptyHunyuanLatentVideo", "CreateVideo", "SaveVideo", "VAELoader"} <= set(info)


def test_model_file_added_after_boot_is_listed(comfy_server, comfy_client):
    # ComfyUI re-scans a model folder whose modification time changed, so tests can add files at any time.
    name = "harness_probe_vae.safetensors"
    comfy_server.add_model("vae", b"not a real model", name)
    assert name in comfy_client.models("vae")
    vae_choices = comfy_client.object_info("VAELoader")["input"]["required"]["vae_name"][0]
    assert name in vae_choices


def test_pack_uses_the_versioned_node_api(comfy_server):
    # ComfyUI 0.3.75 and 0.8.0 both ship comfy_api.v0_0_2; `latest` is only the fallback for a ComfyUI without it.
    (version,) = re.findall(r"ComfyUI-WanMoE: node API comfy_api\.(\w+)", comfy_server.log_text())
    assert version == "v0_0_2"
    direct = [p.name for p in sorted((REPO_ROOT / "nodes").glob("*.py"))
              if p.name != "api_version.py" and re.search(r"^\s*(from|import) comfy_api", p.read_text(), re.M)]
    assert direct == [], f"nodes importing comfy_api directly instead of through nodes/api_version.py: {direct}"
