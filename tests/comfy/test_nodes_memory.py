"""The shared model cache inside the real ComfyUI (issue 7): re-queuing loads nothing, and ComfyUI's "Unload models"
(/free) releases our entries, so the next run loads them again. Loads are counted from the cache's log lines."""

from __future__ import annotations

import pytest

from nodes_testing import (RELEASED, loads_in, log_mark, log_since, node_id_of, status_messages, t2v_prompt,
                           wait_for_log, write_tiny_set)

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    return write_tiny_set(comfy_server, "memory")


def run_and_count_loads(comfy_server, comfy_client, prompt: dict) -> tuple[list[tuple[str, str]], dict]:
    """Run a prompt; the (kind, file) loads the cache logged meanwhile, and the history entry."""
    mark = log_mark(comfy_server)
    prompt_id = comfy_client.queue(prompt)
    comfy_client.wait(prompt_id, timeout=300)
    return loads_in(log_since(comfy_server, mark)), comfy_client.history(prompt_id)


def test_first_run_loads_each_model_once_and_requeue_with_a_new_seed_loads_nothing(names, comfy_server, comfy_client):
    first, _ = run_and_count_loads(comfy_server, comfy_client, t2v_prompt(names, seed=1, prefix="memory/first"))
    assert sorted(first) == sorted([("dit", names["high"]), ("dit", names["low"]), ("text_encoder", names["t5"]),
                                    ("vae", names["vae"])])
    prompt = t2v_prompt(names, seed=2, prefix="memory/second")
    again, entry = run_and_count_loads(comfy_server, comfy_client, prompt)
    ran = set(prompt) - set(status_messages(entry)["execution_cached"]["nodes"])
    assert {node_id_of(prompt, "WanMoESampler"), node_id_of(prompt, "WanMoEVAEDecode")} <= ran  # they did run
    assert again == []


def test_unload_models_releases_our_entries_and_the_next_run_loads_them_again(names, comfy_server, comfy_client):
    run_and_count_loads(comfy_server, comfy_client, t2v_prompt(names, seed=3, prefix="memory/before_free"))
    mark = log_mark(comfy_server)
    comfy_client.free(unload_models=True, free_memory=False)  # the UI's "Unload models"
    released = int(wait_for_log(comfy_server, mark, RELEASED, timeout=30).group(1))
    assert released >= 4  # both experts, the text encoder and the VAE of the run above (and any other test's)
    assert "in use kept" in log_since(comfy_server, mark) and "0 in use kept" in log_since(comfy_server, mark)
    # ComfyUI keeps its node outputs (free_memory=False), so the text encode stays cached; the sampler and the
    # decoder run and must read their weights from the files again.
    after, _ = run_and_count_loads(comfy_server, comfy_client, t2v_prompt(names, seed=4, prefix="memory/after_free"))
    assert sorted(after) == sorted([("dit", names["high"]), ("dit", names["low"]), ("vae", names["vae"])])
