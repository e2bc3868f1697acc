"""WanMoEPromptEnhance and WanMoESafetyFilter in the real ComfyUI: their text reaches core nodes, the LLM folder is
loaded from models/LLM, the filter blocks with the matched terms named, user term lists in models/safety_terms count."""

from __future__ import annotations

import pytest

from harness.client import PromptFailed, PromptRejected

pytestmark = pytest.mark.comfy

TEST_LLM = "wanmoe_prompting_test_llm"  # this module's own tiny LM folder in models/LLM
PROMPT = "A red fox trots through fresh snow"


def enhance_inputs(**changes) -> dict:
    inputs = {"prompt": PROMPT, "mode": "template", "language": "auto", "scene": "", "shot": "wide shot",
              "camera": "none", "lighting": "golden hour", "color": "none", "style": "cinematic", "skip_covered": True,
              "llm_model": "wanmoe_absent_llm", "subject": "", "on_subject_lost": "keep original", "max_new_tokens": 24,
              "temperature": 0.0, "seed": 0, "llm_dtype": "auto"}
    return inputs | changes


def chain(enhance: dict, mode: str = "block", term_lists: str = "default", extra_terms: str = "") -> dict:
    """Prompt Enhance -> Safety Filter -> core PreviewAny (the filtered text) and PreviewAny (the changes)."""
    return {
        "1": {"class_type": "WanMoEPromptEnhance", "inputs": enhance},
        "2": {"class_type": "WanMoESafetyFilter",
              "inputs": {"text": ["1", 0], "mode": mode, "term_lists": term_lists, "extra_terms": extra_terms}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }


@pytest.fixture(scope="module")
def test_llm(comfy_server):
    from wan_core.testing.tiny.llm import write_llm_folder

    path = comfy_server.models_dir / "LLM" / TEST_LLM
    if not path.exists():
        write_llm_folder(path, seed=1)
    return path


def test_template_prompt_reaches_core_nodes_with_its_changes_shown(comfy_client):
    from wan_core.prompting.enhance import enhance_template

    outputs = comfy_client.run(chain(enhance_inputs()), timeout=120)
    expected = enhance_template(PROMPT, "auto", {"shot": "wide shot", "camera": "none", "lighting": "golden hour",
                                                 "color": "none", "style": "cinematic"})
    assert outputs["3"]["text"] == [expected.text]
    assert expected.text == (f"{PROMPT}. Wide shot. Warm golden-hour sunlight with long shadows. "
                             "Cinematic, film-like image with fine detail.")
    assert outputs["4"]["text"] == [expected.report()] == outputs["1"]["text"]  # also in the node's own text box
    assert outputs["2"]["text"][0].startswith("no sensitive terms found (")


def test_llm_mode_runs_the_folder_in_models_llm_and_shows_the_rewrite(test_llm, comfy_client):
    from wan_core.prompting.enhance import enhance_llm
    from wan_core.prompting.llm import load_causal_lm

    settings = dict(max_new_tokens=24, temperature=1.0, seed=7)
    outputs = comfy_client.run(chain(enhance_inputs(mode="llm", llm_model=TEST_LLM, **settings)), timeout=300)
    here = enhance_llm(load_causal_lm(test_llm), PROMPT, "auto", **settings)  # the same model and settings, in-process
    assert here.proposed and not here.subject.ok  # a random model does not keep the fox
    assert outputs["4"]["text"] == [here.report()]
    assert outputs["3"]["text"] == [PROMPT]  # kept, as on_subject_lost says
    assert f"the enhancer proposed (not used):\n{here.proposed}\n" in outputs["4"]["text"][0]


def test_template_mode_does_not_need_a_language_model(comfy_client):
    outputs = comfy_client.run(chain(enhance_inputs(llm_model="wanmoe_absent_llm", shot="close-up")), timeout=120)
    assert outputs["3"]["text"][0].startswith(PROMPT + ". Close-up shot.")


def test_llm_mode_without_the_folder_is_rejected_at_queue_time(comfy_server, comfy_client):
    with pytest.raises(PromptRejected) as caught:
        comfy_client.queue(chain(enhance_inputs(mode="llm", llm_model="wanmoe_absent_llm")))
    details = [e["details"] for e in caught.value.node_errors["1"]["errors"]]
    assert any("'wanmoe_absent_llm' is not a model folder (with config.json) in the LLM folder" in d
               and str(comfy_server.models_dir / "LLM") in d for d in details), details


def test_filter_blocks_with_the_matched_terms_named(comfy_client):
    with pytest.raises(PromptFailed) as caught:
        comfy_client.run(chain(enhance_inputs(prompt="A battlefield full of gore, 血腥的场面")), timeout=120)
    assert caught.value.details["node_type"] == "WanMoESafetyFilter"
    assert caught.value.details["exception_message"].startswith(
        "the prompt contains sensitive terms: 'gore' (en.txt), '血腥' (zh.txt).")


def test_filter_warns_and_passes_the_prompt_on(comfy_client):
    outputs = comfy_client.run(chain(enhance_inputs(prompt="Slow-motion gore", mode="template"), mode="warn"),
                               timeout=120)
    assert outputs["3"]["text"][0].startswith("Slow-motion gore.")
    assert outputs["2"]["text"][0].startswith("warning: the prompt contains sensitive terms: 'gore' (en.txt)")


def test_user_lists_in_models_safety_terms_and_extra_terms(comfy_server, comfy_client):
    folder = comfy_server.models_dir / "safety_terms"
    folder.mkdir(exist_ok=True)
    (folder / "wanmoe_prompting_test_terms.txt").write_text("# test list\nmarmalade\n", encoding="utf-8")
    marmalade = enhance_inputs(prompt="A jar of marmalade on a table")
    assert comfy_client.run(chain(marmalade), timeout=120)["3"]["text"][0].startswith("A jar")  # not a default term
    with pytest.raises(PromptFailed, match=r"'marmalade' \(wanmoe_prompting_test_terms.txt\)"):
        comfy_client.run(chain(marmalade, term_lists="default + safety_terms folder"), timeout=120)
    with pytest.raises(PromptFailed, match=r"'jar' \(extra_terms\)"):
        comfy_client.run(chain(marmalade, extra_terms="jar"), timeout=120)
