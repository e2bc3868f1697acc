"""The second ComfyUI (0.8.0 + frontend 1.58.1) in CI: without its source snapshot, CI fails saying what is missing
and what to do, before any suite runs; skipping it takes an explicit WANMOE_SKIP_COMFY08=1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "WANMOE_SKIP_COMFY08"}
    environment.update(WANMOE_COMFYUI_SNAPSHOT=str(tmp_path / "shared" / "comfyui-0.8.0.tar.xz"), **env)
    return subprocess.run(["bash", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


def test_ci_run_fails_up_front_naming_the_missing_snapshot(tmp_path):
    result = run([".ci/run"], tmp_path)
    assert result.returncode == 1
    assert f"the ComfyUI 0.8.0 source snapshot {tmp_path}/shared/comfyui-0.8.0.tar.xz is missing" in result.stderr
    assert "WANMOE_SKIP_COMFY08=1" in result.stderr
    assert "[setup" not in result.stdout + result.stderr  # nothing was set up or run before the check


def test_the_0_8_0_tests_fail_without_the_snapshot_with_what_to_do(tmp_path):
    result = run(["scripts/run_tests_comfy08.sh"], tmp_path)
    assert result.returncode == 1
    assert "FAILED: no ComfyUI 0.8.0 source snapshot" in result.stderr
    assert f"Expected {tmp_path}/shared/comfyui-0.8.0.tar.xz" in result.stderr
    assert not (tmp_path / "shared").exists()


def test_skipping_the_0_8_0_tests_is_explicit_and_says_so(tmp_path):
    result = run(["scripts/run_tests_comfy08.sh"], tmp_path, WANMOE_SKIP_COMFY08="1")
    assert result.returncode == 0
    assert "the ComfyUI 0.8.0 tests were skipped on purpose" in result.stdout
