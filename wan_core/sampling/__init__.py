"""sampling: the MoE sampling run: schedules, flow solvers, the loop over two experts, where the experts live.

Owns: `schedule` (official sigma grids, shift, truncated timesteps, the timesteps fed to the DiT, expert split),
`solvers` (flow UniPC, DPM++ 2M, Euler), `sampler` (the official loop: expert per step, guidance per expert, noise, denoise),
`experts` (the ExpertSource protocol), `placement` (resident / swap / stream through the model cache, each
expert with its LoRA stack), `control` (VACE control streams over a run: per-expert step ranges, each forward's
VaceInput), `multi_gpu` (the experts of a run on several GPUs: the worker pool and what every rank loads).
May import: `wan_core.parallel`, `wan_core.lora`, `wan_core.dit`, `wan_core.memory`, `wan_core.io`, `wan_core.config`.
"""
