"""UI-format workflow (what the canvas saves) -> API-format prompt, using a real ComfyUI's /object_info.

The frontend does this conversion when you press Run; doing it here from the server's own node
definitions lets a test check that a shipped UI workflow and its API twin say the same thing.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED_MODES = {2, 4}  # never / bypass


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI workflow to the API prompt the frontend would queue (links as [node id, slot])."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY_NODES or node.get("mode", 0) in MUTED_MODES:
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node {node['id']} has type {node['type']!r}, which the server does not serve")
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for section in ("required", "optional"):
            specs = info["input"].get(section, {})
            for name in info.get("input_order", {}).get(section, list(specs)):
                spec = specs[name]
                if name in linked:
                    link = linked[name]
                    inputs[name] = [str(link[1]), link[2]]
                    if _is_widget(spec) and values:  # a widget converted to a socket keeps its slot in widgets_values
                        values.pop(0)
                        if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("control_after_generate"):
                            values.pop(0)
                elif _is_widget(spec):
                    if not values:
                        raise ValueError(f"node {node['id']} ({node['type']}) has too few widget values for {name!r}")
                    inputs[name] = values.pop(0)
                    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("control_after_generate"):
                        values.pop(0)  # the frontend's "fixed/increment/randomize" widget
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
