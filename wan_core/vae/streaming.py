"""The VAE's runner: how a clip goes through the network in bounded memory (official WanVAE's encode/decode loops).

Decode runs one latent frame at a time (the first gives 1 video frame, every later one 4) and writes each step
into a preallocated output; encode runs chunks of 1, 4, 4, ... frames. Peak memory is therefore set by the
causal caches and one step's activations, not by the clip length. For large frames the (H, W) plane is split
into overlapping tiles, each run through all frames with its own causal cache and blended with feathered
weights, so the peak is set by the tile size. `estimate_peak_bytes` and `plan` decide whether and how to tile.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from ..memory.budget import NotEnoughMemoryError, fits, gib, room, tier_of
from ..memory.pace import QUERY_MULTIPLE, current, empty_as, pacing
from ..memory.tiling import TileSpec, plan_tiles
from .model import CACHE_FRAMES, SPATIAL_FACTOR, TEMPORAL_FACTOR, ResidualBlock, Resample, WanVAE, _Cache
from .shapes import latent_frames, video_frames

Tiling = Literal["auto", "on", "off"]
ProgressCallback = Callable[[int, int], None]

DEFAULT_TILE = 32  # latent px (256 video px) when tiling is forced on without a size
_AUTO_TILES = (64, 48, 40, 32, 24, 16, 12, 8)  # latent px, tried largest first when tiling by memory


def _itemsize(vae: WanVAE) -> int:
    return torch.empty((), dtype=vae.dtype).element_size()


def estimate_peak_bytes(vae: WanVAE, height: int, width: int, *, batch: int = 1, decode: bool = True) -> int:
    """Estimated working memory of one untiled streamed run on a latent of (height, width), weights excluded.

    Sums the causal caches exactly (2 frames of each conv input; of a narrowing head's output) and adds a multiple
    of the largest activation of one step, plus the per-frame attention matrix at the latent resolution. On
    purpose on the safe side: 1.5x the measured decode at base 96 (367 vs 234-236 MiB at 16x24), 1.6x the encode.
    """
    caches, largest = 0, 0

    def act(c: int, t: int, hw: int) -> None:
        nonlocal largest
        largest = max(largest, c * t * hw)

    def res(block: ResidualBlock, t: int, hw: int) -> int:
        nonlocal caches
        cin, cout = block.residual[2].in_channels, block.residual[2].out_channels
        caches += CACHE_FRAMES * (cin + cout) * hw
        act(cin, t + CACHE_FRAMES, hw)
        act(cout, t + CACHE_FRAMES, hw)
        return cout

    hw = height * width
    if decode:
        t, hw_ = 1, hw
        caches += CACHE_FRAMES * vae.z_dim * hw_
        layers = [*vae.decoder.middle, *vae.decoder.upsamples]
    else:
        t, hw_ = TEMPORAL_FACTOR, hw * SPATIAL_FACTOR**2
        caches += CACHE_FRAMES * 3 * hw_
        layers = [*vae.encoder.downsamples, *vae.encoder.middle]
    c = vae.decoder.conv1.out_channels if decode else vae.encoder.conv1.out_channels
    act(c, t, hw_)
    for layer in layers:
        if isinstance(layer, ResidualBlock):
            c = res(layer, t, hw_)
        elif isinstance(layer, Resample):
            if layer.mode == "upsample3d":
                caches += CACHE_FRAMES * c * hw_
                act(2 * c, t, hw_)
                t = 1  # the interleaved frames go on one at a time (Decoder3d._from)
            if layer.mode.startswith("up"):
                act(c, t, 4 * hw_)
                hw_ *= 4
                c //= 2
            else:
                hw_ //= 4
                if layer.mode == "downsample3d":
                    caches += c * hw_
                    t = max(1, t // 2)
            act(c, t, hw_)
    head = vae.decoder.head[2] if decode else vae.encoder.head[2]
    caches += CACHE_FRAMES * min(c, head.out_channels) * hw_  # a narrowing head keeps partial sums (model._pending_sums)
    # One fp32 score block per frame if SDPA takes its math path: the query chunks the run's pace allows (memory.pace).
    width = vae.decoder.conv1.out_channels if decode else vae.encoder.head[2].in_channels
    attention = 4 * hw * current().rows(hw, 4.0 * hw * width, vae.device, QUERY_MULTIPLE)
    return batch * ((caches + 6 * largest) * _itemsize(vae) + attention)


def _auto_tile(vae: WanVAE, height: int, width: int, *, batch: int, decode: bool, forced: bool) -> int:
    """The largest tile (latent px) whose estimated working memory fits the device's free memory; NotEnoughMemoryError
    (before anything is allocated) when not even the smallest does."""
    for candidate in _AUTO_TILES:
        if forced and candidate > DEFAULT_TILE:
            continue  # forced on with plenty of memory: still tile, at the default size
        need = estimate_peak_bytes(vae, candidate, candidate, batch=batch, decode=decode)
        if decode:  # the whole frame still passes the latent-resolution stages (for exact attention)
            need += batch * (12 * vae.decoder.conv1.out_channels * height * width * _itemsize(vae)
                             + 4 * candidate * candidate * height * width)
        if fits(need, vae.device):
            return candidate
    what = "decoding" if decode else "encoding"
    raise NotEnoughMemoryError(
        f"{what} {width * SPATIAL_FACTOR}x{height * SPATIAL_FACTOR} frames (batch {batch}) needs about {gib(need)} of "
        f"working memory on {tier_of(vae.device)} even in {_AUTO_TILES[-1] * SPATIAL_FACTOR}-px tiles, but "
        f"{gib(room(vae.device))} is available. To fit: a smaller video size, the bf16 VAE dtype, or free memory "
        "(Unload models).", needed=need, free=room(vae.device), device=tier_of(vae.device))


def plan(vae: WanVAE, height: int, width: int, *, batch: int, decode: bool, tiling: Tiling,
         tile_size: int | None, tile_overlap: int | None) -> list[TileSpec] | None:
    """Tiles (latent px) for a run, or None for one untiled pass."""
    if tiling not in ("auto", "on", "off"):
        raise ValueError(f"tiling must be 'auto', 'on' or 'off', got {tiling!r}")
    untiled = estimate_peak_bytes(vae, height, width, batch=batch, decode=decode)
    if tiling == "off":
        if not fits(untiled, vae.device):
            raise NotEnoughMemoryError(
                f"{'decoding' if decode else 'encoding'} {width * SPATIAL_FACTOR}x{height * SPATIAL_FACTOR} frames "
                f"untiled needs about {gib(untiled)} of working memory on {tier_of(vae.device)}, but "
                f"{gib(room(vae.device))} is available. To fit: set tiling to auto or on.",
                needed=untiled, free=room(vae.device), device=tier_of(vae.device))
        return None
    if tiling == "auto" and fits(untiled, vae.device):
        return None
    if tile_size is None:
        tile_size = _auto_tile(vae, height, width, batch=batch, decode=decode, forced=tiling == "on")
    if tile_size < 2:
        raise ValueError(f"tile_size must be at least {2 * SPATIAL_FACTOR} px (0 = automatic), got "
                         f"{tile_size * SPATIAL_FACTOR} px")
    overlap = max(1, tile_size // 3) if tile_overlap is None else tile_overlap
    if not 0 <= overlap <= tile_size // 2:
        px = SPATIAL_FACTOR
        raise ValueError(f"tile_overlap must be at most half the tile: got {overlap * px} px for a {tile_size * px}-px "
                         f"tile (at most {tile_size // 2 * px} px); lower tile_overlap or raise tile_size")
    if height <= tile_size and width <= tile_size:
        return None
    # The outer third of each overlap gets no weight (a tile's border effects live there); the blend
    # ramp runs across the middle third.
    scale = SPATIAL_FACTOR if decode else 1  # decode blends at video resolution, encode at latent resolution
    # The last row / column of tiles is cut at the frame's edge: a whole tile moved back over its neighbour would
    # decode up to tile - overlap pixels twice more (2.0x the frame's area instead of 1.56x, 4x3 tiles of 64 px
    # at 128x192), and the VAE takes any size.
    return plan_tiles(height, width, tile=tile_size, overlap=overlap, scale=scale,
                      margin=(overlap - max(1, overlap // 6)) // 2, crop_last=True)


def _check_output(nbytes: int, device: torch.device | str, what: str) -> None:
    """Refuse, before allocating it, an output buffer that cannot fit where it goes."""
    if nbytes > room(device):
        raise NotEnoughMemoryError(
            f"the decoded video ({what}) takes {gib(nbytes)} on {tier_of(device)}, but {gib(room(device))} is "
            "available. To fit: decode fewer frames or a smaller size, or free memory (Unload models).",
            needed=nbytes, free=room(device), device=tier_of(device))


def _stream(tiles: list[TileSpec] | None, steps: int, step: Callable[[TileSpec | None, int, tuple], None],
            on_frame: ProgressCallback | None) -> None:
    """The loop decode and encode share: every tile (or the whole plane), its steps in order with fresh causal
    caches, `on_frame(done, total)` after each step."""
    total, done = steps * (len(tiles) if tiles else 1), 0
    for tile in tiles or [None]:
        caches = (_Cache(), _Cache())  # the whole-frame stages' and the tile's own
        for i in range(steps):
            step(tile, i, caches)
            done += 1
            if on_frame is not None:
                on_frame(done, total)


@torch.no_grad()
def decode(vae: WanVAE, latent: torch.Tensor, *, tiling: Tiling = "auto", tile_size: int | None = None,
           tile_overlap: int | None = None, on_frame: ProgressCallback | None = None,
           out_device: torch.device | str = "cpu", check: Callable[[], None] | None = None) -> torch.Tensor:
    """Normalised latent [B,16,T,h,w] -> video [B,3,1+4(T-1),8h,8w] float32 in [-1,1] (on `out_device`).

    `on_frame(done, total)` is called after each step (one latent frame of one tile); `check()` (the cancel check)
    before every convolution band and attention chunk (memory.pace), so Cancel is seen within large frames. `tile_size`/`tile_overlap`
    are in latent px. The result is a [B,3,F,H,W] view of a channels-last [B,F,H,W,3] buffer, so
    `interop.video_to_image` needs no copy.
    """
    if latent.ndim != 5 or latent.shape[1] != vae.z_dim:
        raise ValueError(f"expected a Wan2.1 latent [B, {vae.z_dim}, T, h, w], got shape {tuple(latent.shape)}")
    b, _, t_lat, h, w = latent.shape
    tiles = plan(vae, h, w, batch=b, decode=True, tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap)
    s = SPATIAL_FACTOR
    _check_output(b * video_frames(t_lat) * h * s * w * s * 3 * 4, out_device, f"{video_frames(t_lat)} frames of "
                  f"{w * s}x{h * s} (batch {b})")
    buffer = torch.empty(b, video_frames(t_lat), h * s, w * s, 3, dtype=torch.float32, device=out_device)
    video = buffer.permute(0, 4, 1, 2, 3)
    features = None
    if tiles is not None:
        buffer.zero_()
        features = _shared_features(vae, latent, out_device, on_frame, t_lat * len(tiles))

    def step(tile: TileSpec | None, i: int, caches: tuple) -> None:
        f0 = 0 if i == 0 else video_frames(i)
        if tile is None:
            frames = vae.decode_step(latent[:, :, i: i + 1], caches[0])
            video[:, :, f0: f0 + frames.shape[2]] = frames
        else:
            (ys, xs), (out_ys, out_xs) = tile.src, tile.dst
            frames = vae.decode_from_features(features[:, :, i: i + 1, ys, xs], caches[1])
            video[:, :, f0: f0 + frames.shape[2], out_ys, out_xs] += (frames * tile.weight.to(vae.device)).to(out_device)

    with pacing(check=check):
        _stream(tiles, t_lat, step, on_frame)
    return video


def _shared_features(vae: WanVAE, latent: torch.Tensor, out_device: torch.device | str,
                     on_frame: ProgressCallback | None, total: int) -> torch.Tensor:
    """The latent-resolution stages of every frame, run once for all tiles (they need the whole frame for the
    middle attention). The trade: these features of the whole clip are kept, in the VAE's dtype on `out_device`
    (the real VAE: 384 channels at latent resolution, about a quarter of the decoded video's own float32 bytes),
    instead of re-running those stages for every tile."""
    cache, kept = _Cache(), None
    for i in range(latent.shape[2]):
        f = vae.decode_features(latent[:, :, i: i + 1], cache)
        if kept is None:
            kept = empty_as(f, (*f.shape[:2], latent.shape[2], *f.shape[3:]), out_device)
        kept[:, :, i: i + 1] = f
        if on_frame is not None:
            on_frame(0, total)  # a chance to cancel; the bar moves with the tiles
    return kept


@torch.no_grad()
def encode(vae: WanVAE, video: torch.Tensor, *, tiling: Tiling = "auto", tile_size: int | None = None,
           tile_overlap: int | None = None, on_frame: ProgressCallback | None = None,
           out_device: torch.device | str = "cpu", check: Callable[[], None] | None = None) -> torch.Tensor:
    """Video [B,3,4n+1,H,W] in [-1,1] -> normalised latent mean [B,16,n+1,H/8,W/8] float32.

    Runs chunks of 1, 4, 4, ... frames; H and W must be multiples of 8; tile args as in `decode`.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video [B, 3, frames, H, W], got shape {tuple(video.shape)}")
    b, _, f, height, width = video.shape
    t_lat = latent_frames(f)
    s = SPATIAL_FACTOR
    if height % s or width % s:
        raise ValueError(
            f"the Wan VAE encodes frames whose height and width are multiples of {s}; got {width}x{height}. "
            f"Crop or resize to {width // s * s}x{height // s * s} (or pad up to the next multiple)."
        )
    h, w = height // s, width // s
    tiles = plan(vae, h, w, batch=b, decode=False, tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap)
    out = torch.zeros(b, vae.z_dim, t_lat, h, w, dtype=torch.float32, device=out_device)

    def step(tile: TileSpec | None, i: int, caches: tuple) -> None:
        ys, xs = tile.src if tile is not None else (slice(0, h), slice(0, w))
        f0, f1 = (0, 1) if i == 0 else (1 + TEMPORAL_FACTOR * (i - 1), 1 + TEMPORAL_FACTOR * i)
        mu = vae.encode_step(video[:, :, f0:f1, ys.start * s: ys.stop * s, xs.start * s: xs.stop * s], caches[0])
        if tile is None:
            out[:, :, i: i + 1] = mu
        else:
            out[:, :, i: i + 1, ys, xs] += (mu * tile.weight.to(mu.device)).to(out_device)

    with pacing(check=check):
        _stream(tiles, t_lat, step, on_frame)
    return out
