// ComfyUI-WanMoE frontend extension: shows a node's `ui.text` output in a read-only text box that is saved neither
// in the workflow nor in the prompt: which steps ran on which expert (the sampler), what the prompt enhancer changed,
// and the reports of the safety filter, frame moderation and frame interpolation.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const TEXT_BOXES = {
  WanMoESampler: "expert_schedule",
  WanMoEPromptEnhance: "changes_shown",
  WanMoESafetyFilter: "report_shown",
  WanMoEFrameModerate: "report_shown",
  WanMoEFrameInterpolate: "report_shown",
};

app.registerExtension({
  name: "WanMoE.ExpertSchedule",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = TEXT_BOXES[nodeData.name];
    if (!name) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === name);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, name, ["STRING", { multiline: true }], app).widget;
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
