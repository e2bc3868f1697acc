"""post: what happens to decoded frames before they are saved: moderation, frame interpolation, colour grading.

Owns: `interpolate` (optical-flow frame interpolation with occlusion-aware blending and scene-cut detection),
`lut` (.cube 1D/3D LUT files and trilinear application), `grade` (exposure/contrast/saturation/temperature,
clip-wide colour matching to a reference in Lab), `moderate` (scoring frames with a user-supplied image
classifier and acting on the scores). Frames are ComfyUI IMAGE tensors [F, H, W, 3] float 0..1.
May import: `wan_core.memory`, `wan_core.io`, `wan_core.config`.
"""
