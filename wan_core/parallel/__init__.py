"""parallel: one DiT call on several processes (GPUs, or gloo ranks on a CPU): sequence and CFG parallelism.

Owns: `plan` (CFG groups x Ulysses size per call, valid GPU counts, WANMOE_GPUS), `ulysses` (the all-to-all
around the registered attention kernel), `forward` (a rank's token share through embed / blocks / head, and
assembling the shares), `call` (one call on every rank: broadcast inputs, per-block Cancel agreement, gather),
`group` (process group on 127.0.0.1: gloo on CPU, NCCL on CUDA, timeouts, CFG subgroups, rank devices),
`pool` (rank 0's worker processes: spawn, liveness, failure diagnosis, teardown, release), `worker` and
`spawn_entry` (the worker process), `experts` (the sampler's ExpertSource over the pool), `sharding` (FSDP2
weight sharding per block). May import: `wan_core.dit`, `wan_core.memory`, `wan_core.io`, `wan_core.config`;
`wan_core.sampling` and `wan_core.api` may import it. Workers build their experts through a factory named
by string ("wan_core.api:experts_for"), so no import points upwards.
"""
