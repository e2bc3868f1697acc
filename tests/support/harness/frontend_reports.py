"""What the ComfyUI frontend shows about missing node types and model files, read the way each version shows it.

Two generations of the frontend report a loaded workflow's problems differently:
  * up to 1.3x (tested: 1.32.9, ComfyUI 0.3.75's): PrimeVue dialogs, "This workflow has missing nodes"
    (`[role=dialog] .comfy-missing-nodes`, one row per node type) and "Missing Models" (`.comfy-missing-models`,
    one option per file, shown as "<folder> / <file name>");
  * 1.5x (tested: 1.58.1): an "N issues found" card (`[data-testid=error-overlay]`) whose "View details" opens the
    Workflow Overview side panel (`[data-testid=properties-panel]`), with one section per kind of issue:
    `error-group-missing-node` (node type buttons) and `error-group-missing-model` (a button per file, its title the
    file name).
`read_missing_report` looks for both and says which one it read, so a test checks the same facts on either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Runs in the page. Returns what is on screen now, opening 1.5x's side panel from its card when the card is shown.
_READ_JS = r"""async () => {
  const texts = (root, sel) => root ? [...root.querySelectorAll(sel)].map(e => e.innerText.trim()).filter(Boolean) : [];
  const out = {ui: [], nodes: [], models: [], card: null, text: ""};
  const nodeDialog = document.querySelector('[role=dialog] .comfy-missing-nodes');
  if (nodeDialog) {
    out.ui.push('missing-nodes dialog');
    out.nodes.push(...texts(nodeDialog, ':scope > div > span:first-child'));
    out.text += nodeDialog.closest('[role=dialog]').innerText + '\n';
  }
  const modelList = document.querySelector('[role=dialog] .comfy-missing-models');
  if (modelList) {
    out.ui.push('missing-models dialog');
    out.models.push(...texts(modelList, '[role=option] span[title]').map(t => t.split(' / ').pop()));
    out.text += modelList.closest('[role=dialog]').innerText + '\n';
  }
  const card = document.querySelector('[data-testid=error-overlay]');
  if (card) {
    out.card = card.innerText.trim();
    const details = card.querySelector('[data-testid=error-overlay-see-errors]');
    if (details) details.click();
  }
  let panel = null;
  for (let i = 0; i < 50; i++) {  // the panel renders a moment after the click (up to 5 s)
    panel = document.querySelector('[data-testid=properties-panel]');
    if (!card || (panel && panel.querySelector('[data-testid^=error-group-]'))) break;
    await new Promise(r => setTimeout(r, 100));
  }
  const nodeGroup = panel && panel.querySelector('[data-testid=error-group-missing-node]');
  const modelGroup = panel && panel.querySelector('[data-testid=error-group-missing-model]');
  if (nodeGroup || modelGroup) out.ui.push('issues panel');
  if (nodeGroup) {
    out.nodes.push(...texts(nodeGroup, 'li button:not([aria-label])'));
    out.text += nodeGroup.innerText + '\n';
  }
  if (modelGroup) {
    out.models.push(...[...modelGroup.querySelectorAll('button[title]:not([aria-label])')].map(b => b.title.trim()));
    out.text += modelGroup.innerText + '\n';
  }
  return out;
}"""

# Snapshot for "has the page stopped changing": open dialogs and the issues card.
STATE_JS = """() => [...[...document.querySelectorAll('[role=dialog], .p-dialog')].map(d => d.innerText.trim()).filter(Boolean),
                    ...[...document.querySelectorAll('[data-testid=error-overlay]')].map(c => 'card: ' + c.innerText.trim())]"""

_CLOSE_PANEL_JS = """() => {
  const panel = document.querySelector('[data-testid=properties-panel]');
  const toggle = document.querySelector('button[aria-label="Toggle properties panel"]');
  if (panel && toggle) toggle.click();
  const card = document.querySelector('[data-testid=error-overlay] button[aria-label=Close]');
  if (card) card.click();
  return !!(panel || card);
}"""


@dataclass
class MissingReport:
    """Missing node types and model files as the frontend reported them, and where (`ui`: what was read)."""

    node_types: list[str] = field(default_factory=list)
    model_files: list[str] = field(default_factory=list)
    ui: list[str] = field(default_factory=list)  # "missing-nodes dialog", "missing-models dialog", "issues panel"
    card: str | None = None  # 1.5x's "N issues found" card text, when it was shown
    text: str = ""

    def __str__(self) -> str:
        where = ", ".join(self.ui) or "nothing shown"
        return f"{where}: nodes {self.node_types}, models {self.model_files}" + (f", card {self.card!r}" if self.card else "")


def read_missing_report(page) -> MissingReport:
    """What the page (a Playwright page) shows now about missing nodes and models, from whichever UI it uses."""
    raw = page.evaluate(_READ_JS)
    return MissingReport(node_types=sorted(set(raw["nodes"])), model_files=sorted(set(raw["models"])), ui=raw["ui"],
                         card=raw["card"], text=raw["text"].strip())


def close_issue_panel(page, settle: float = 0.3) -> bool:
    """Close 1.5x's issues card and side panel if open (older frontends have neither); True when something closed."""
    closed = page.evaluate(_CLOSE_PANEL_JS)
    if closed:
        time.sleep(settle)
    return closed
