// ComfyUI-WanMoE frontend extension: shows in the Wan2.2 MoE Sampler node which steps ran on which expert
// (the node's `ui.text` output), in a read-only text box that is saved neither in the workflow nor in the prompt.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const WIDGET = "expert_schedule";

app.registerExtension({
  name: "WanMoE.ExpertSchedule",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "WanMoESampler") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === WIDGET);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
        widget.serialize = false; // not in the workflow's widgets_values
        widget.options.serialize = false; // not in the API prompt
        if (widget.inputEl) {
          widget.inputEl.readOnly = true;
          widget.inputEl.style.opacity = 0.75;
        }
      }
      widget.value = text;
      this.setDirtyCanvas(true, true);
    };
  },
});
