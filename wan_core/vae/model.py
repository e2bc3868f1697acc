"""The Wan2.1 video VAE (used by Wan2.2-T2V-A14B), in the official key layout, streamed in bounded memory.

Structure (official wan/modules/vae2_1.py): causal 3-D convolutions that remember the last two input frames
of the previous chunk, RMS norms, spatial/temporal resampling, single-head per-frame attention in the middle
blocks. 16 latent channels, 4x temporal and 8x spatial compression: 4n+1 video frames <-> n+1 latent frames.

Decode runs one latent frame at a time (the first gives 1 video frame, every later one 4) and writes each
step into a preallocated output; encode runs chunks of 1, 4, 4, ... frames. Peak memory is therefore set by
the causal caches and one step's activations, not by the clip length. For large frames the (H, W) plane is
split into overlapping tiles, each run through all frames with its own causal cache and blended with
feathered weights, so the peak is set by the tile size.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .latent_format import WAN21_LATENT_MEAN, denormalize, normalize
from ..memory.budget import free_bytes
from ..memory.tiling import TileSpec, plan_tiles
from .shapes import latent_frames, video_frames

CACHE_FRAMES = 2  # a causal conv with a 3-frame kernel needs the 2 frames before the chunk
TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 8
LATENT_CHANNELS = len(WAN21_LATENT_MEAN)

Tiling = Literal["auto", "on", "off"]
ProgressCallback = Callable[[int, int], None]

DEFAULT_TILE = 32  # latent px (256 video px) when tiling is forced on without a size
_AUTO_TILES = (64, 48, 40, 32, 24, 16, 12, 8)  # latent px, tried largest first when tiling by memory


# ----------------------------------------------------------------------------------------------------------
# building blocks


class _Cache:
    """Causal state of one streamed run: each causal conv's last input frames, and resamplers' first-chunk flags."""

    def __init__(self) -> None:
        self.slots: dict[int, object] = {}

    def get(self, module: nn.Module) -> object:
        return self.slots.get(id(module))

    def put(self, module: nn.Module, value: object) -> None:
        self.slots[id(module)] = value


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else (v[0], v[1], v[2])


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only at the front in time (2*p_t frames, replaced by cached frames when given)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, _triple(kernel_size), stride=_triple(stride), padding=0)
        pt, ph, pw = _triple(padding)
        self.time_pad = 2 * pt
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        front = self.time_pad
        if history is not None and front > 0:
            x = torch.cat([history.to(x.dtype), x], dim=2)
            front -= history.shape[2]
        if front > 0 or any(self.space_pad):
            x = F.pad(x, (*self.space_pad, front, 0))
        return self._conv_forward(x, self.weight, self.bias)


def _causal(conv: CausalConv3d, x: torch.Tensor, cache: _Cache | None) -> torch.Tensor:
    """Run `conv` on a chunk, prepending the previous chunk's last input frames, and remember this chunk's."""
    if cache is None:
        return conv(x)
    history = cache.get(conv)
    keep = x[:, :, -CACHE_FRAMES:]
    if keep.shape[2] < CACHE_FRAMES and history is not None:
        # A 1-frame chunk keeps the previous last frame too, so the next chunk still sees 2 frames.
        keep = torch.cat([history[:, :, -1:], keep], dim=2)  # type: ignore[index]
    else:
        keep = keep.clone()  # a view would pin the whole chunk
    out = conv(x, history)  # type: ignore[arg-type]
    cache.put(conv, keep)
    return out


class RMSNorm(nn.Module):
    """Channel RMS norm as the official code writes it: F.normalize(x, dim=1) * sqrt(C) * gamma."""

    def __init__(self, dim: int, video: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1) if video else torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x / max(||x||_2, 1e-12) over channels (not x * rsqrt(mean(x^2) + eps)); fp32 for half inputs.
        y = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1).to(x.dtype)
        return y * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """RMS -> SiLU -> causal conv -> RMS -> SiLU -> (dropout) -> causal conv, plus a 1x1x1 shortcut on width change."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Indices follow the official nn.Sequential so keys read `residual.{0,2,3,6}`.
        self.residual = nn.ModuleList([
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1),
        ])
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        r = self.residual
        h = self.shortcut(x) if self.shortcut is not None else x
        x = _causal(r[2], F.silu(r[0](x)), cache)
        x = _causal(r[6], F.silu(r[3](x)), cache)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame, with a residual connection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(
        self, x: torch.Tensor, cache: _Cache | None = None, region: tuple[slice, slice] | None = None
    ) -> torch.Tensor:
        """Attend over all pixels of each frame; with `region` (ys, xs) return only that window's pixels.

        Keys and values always come from the whole frame, so a tile computed this way equals the same window
        of the untiled result: tiling does not change what the attention sees.
        """
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(y))
        if region is None:
            qkv = qkv.reshape(b * t, 1, 3 * c, h * w).transpose(2, 3).contiguous()
            q, k, v = qkv.chunk(3, dim=-1)
            x_out, (h_out, w_out) = x, (h, w)
        else:
            ys, xs = region
            kv = qkv[:, c:].reshape(b * t, 1, 2 * c, h * w).transpose(2, 3).contiguous()
            k, v = kv.chunk(2, dim=-1)
            q = qkv[:, :c, ys, xs]
            h_out, w_out = q.shape[-2:]
            q = q.reshape(b * t, 1, c, h_out * w_out).transpose(2, 3).contiguous()
            x_out = x[:, :, :, ys, xs]
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.proj(y.squeeze(1).transpose(1, 2).reshape(b * t, c, h_out, w_out))
        return x_out + y.reshape(b, t, c, h_out, w_out).transpose(1, 2)


class Resample(nn.Module):
    """2x spatial up/down sampling; the 3-D modes also double (up) or halve (down) time with a causal conv."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        # Index 0 is the parameter-free upsample / zero pad, so the conv's keys read `resample.1`.
        if mode.startswith("up"):
            self.resample = nn.ModuleList([nn.Identity(), nn.Conv2d(dim, dim // 2, 3, padding=1)])
        else:
            self.resample = nn.ModuleList([nn.Identity(), nn.Conv2d(dim, dim, 3, stride=2)])
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.mode == "upsample3d" and cache is not None:
            if cache.get(self) is None:
                cache.put(self, True)  # first chunk: its frame is kept as is (official 'Rep')
            else:
                # The conv's 2C channels hold two output frames per input frame: interleave them in time.
                x = _causal(self.time_conv, x, cache)
                x = x.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
                t = 2 * t
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        if self.mode.startswith("up"):
            # nearest-exact x2 computed in fp32 as the reference does
            y = F.interpolate(y.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)
        else:
            y = F.pad(y, (0, 1, 0, 1))
        y = self.resample[1](y)
        y = y.view(b, t, *y.shape[1:]).transpose(1, 2)
        if self.mode == "downsample3d" and cache is not None:
            previous = cache.get(self)
            cache.put(self, y[:, :, -1:].clone())
            if previous is not None:  # the first chunk's single frame passes through unchanged
                y = self.time_conv(torch.cat([previous, y], dim=2))  # type: ignore[list-item]
        return y


class Encoder3d(nn.Module):
    """Video [B,3,T,H,W] -> [B, out_channels, T', H/8, W/8] (streamed with a cache)."""

    def __init__(
        self, dim: int, out_channels: int, dim_mult: Sequence[int], num_res_blocks: int, temporal: Sequence[bool]
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(dim_mult) - 1:
                layers.append(Resample(cout, "downsample3d" if temporal[i] else "downsample2d"))
        self.downsamples = nn.ModuleList(layers)
        self.middle = nn.ModuleList([ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                     ResidualBlock(dims[-1], dims[-1])])
        self.head = nn.ModuleList([RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], out_channels, 3, padding=1)])

    def forward(self, x: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        x = _causal(self.conv1, x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        return _causal(self.head[2], F.silu(self.head[0](x)), cache)  # type: ignore[arg-type]


class Decoder3d(nn.Module):
    """Latent [B,z,T,h,w] -> video [B,3,T',8h,8w] (streamed with a cache)."""

    def __init__(
        self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int, temporal: Sequence[bool]
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # the previous level's upsample conv halved the width
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(dim_mult) - 1:
                layers.append(Resample(cout, "upsample3d" if temporal[i] else "upsample2d"))
        self.upsamples = nn.ModuleList(layers)
        self.head = nn.ModuleList([RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1)])

    def forward(
        self,
        x: torch.Tensor,
        cache: _Cache | None = None,
        *,
        tile_cache: _Cache | None = None,
        region: tuple[slice, slice] | None = None,
    ) -> torch.Tensor:
        """Decode a chunk; with `region` only that (ys, xs) window of the output is computed.

        Up to the middle attention the whole (latent-resolution) frame is processed with `cache`, so the
        attention sees every pixel; from there on only the window, with its own causal `tile_cache`.
        """
        x = _causal(self.conv1, x, cache)
        x = self.middle[0](x, cache)
        x = self.middle[1](x, region=region)
        tile_cache = cache if tile_cache is None else tile_cache
        for layer in (self.middle[2], *self.upsamples):
            x = layer(x, tile_cache)
        return _causal(self.head[2], F.silu(self.head[0](x)), tile_cache)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# the model


class WanVAE(nn.Module):
    """The Wan2.1 VAE (official layout: `encoder.*`, `conv1`, `conv2`, `decoder.*`); build with `load_vae`."""

    def __init__(
        self,
        dim: int = 96,
        z_dim: int = LATENT_CHANNELS,
        dim_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_downsample: Sequence[bool] = (False, True, True),
    ) -> None:
        super().__init__()
        if z_dim != LATENT_CHANNELS:
            raise ValueError(f"the Wan2.1 VAE has {LATENT_CHANNELS} latent channels, got z_dim={z_dim}")
        if len(temporal_downsample) != len(dim_mult) - 1 or sum(temporal_downsample) != 2:
            raise ValueError("the Wan2.1 VAE needs len(dim_mult)-1 resample levels, exactly 2 of them temporal (4x)")
        self.dim, self.z_dim = dim, z_dim
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, temporal_downsample)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, tuple(temporal_downsample)[::-1])

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    # -- one streamed step ---------------------------------------------------------------------------------

    def _decode_step(
        self, z: torch.Tensor, cache: _Cache, tile_cache: _Cache | None = None, region: tuple[slice, slice] | None = None
    ) -> torch.Tensor:
        """One normalised latent frame [B,16,1,h,w] -> 1 (first step) or 4 video frames (of `region`), clamped, fp32."""
        z = denormalize(z.to(self.device, torch.float32)).to(self.dtype)
        x = self.decoder(self.conv2(z), cache, tile_cache=tile_cache, region=region)
        return x.float().clamp_(-1.0, 1.0)

    def _encode_step(self, x: torch.Tensor, cache: _Cache) -> torch.Tensor:
        """One chunk of 1 or 4 frames in [-1,1] -> its normalised latent mean [B,16,1,h,w], fp32."""
        h = self.encoder(x.to(self.device, self.dtype), cache)
        # conv1 is 1x1x1: computing only its first z_dim outputs (the mean) gives the same numbers.
        mu = F.conv3d(h, self.conv1.weight[: self.z_dim], self.conv1.bias[: self.z_dim])
        return normalize(mu.float())

    # -- memory estimate and tiling plan -------------------------------------------------------------------

    def estimate_peak_bytes(self, height: int, width: int, *, batch: int = 1, decode: bool = True) -> int:
        """Estimated working memory of one untiled streamed run on a latent of (height, width), weights excluded.

        Sums the causal caches exactly (2 frames of each conv input) and adds a multiple of the largest
        activation of one step, plus the per-frame attention matrix at the latent resolution.
        """
        caches, largest = 0, 0
        item = torch.empty((), dtype=self.dtype).element_size()

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
            caches += CACHE_FRAMES * self.z_dim * hw_
            layers = [*self.decoder.middle, *self.decoder.upsamples]
        else:
            t, hw_ = TEMPORAL_FACTOR, hw * SPATIAL_FACTOR**2
            caches += CACHE_FRAMES * 3 * hw_
            layers = [*self.encoder.downsamples, *self.encoder.middle]
        c = self.decoder.conv1.out_channels if decode else self.encoder.conv1.out_channels
        act(c, t, hw_)
        for layer in layers:
            if isinstance(layer, ResidualBlock):
                c = res(layer, t, hw_)
            elif isinstance(layer, Resample):
                if layer.mode == "upsample3d":
                    caches += CACHE_FRAMES * c * hw_
                    act(2 * c, t, hw_)
                    t *= 2
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
        caches += CACHE_FRAMES * c * hw_  # head conv
        attention = 4 * hw * hw  # one fp32 score matrix per frame if SDPA takes its math path
        return batch * ((caches + 6 * largest) * item + attention)

    def _plan(
        self,
        height: int,
        width: int,
        *,
        batch: int,
        decode: bool,
        tiling: Tiling,
        tile_size: int | None,
        tile_overlap: int | None,
    ) -> list[TileSpec] | None:
        """Tiles (latent px) for a run, or None for one untiled pass."""
        if tiling not in ("auto", "on", "off"):
            raise ValueError(f"tiling must be 'auto', 'on' or 'off', got {tiling!r}")
        if tiling == "off":
            return None
        budget = free_bytes(self.device)
        # 0.7: the estimate leaves out allocator slack and CPU im2col buffers of narrow convs
        if tiling == "auto" and self.estimate_peak_bytes(height, width, batch=batch, decode=decode) <= 0.7 * budget:
            return None
        if tile_size is None:
            tile_size = _AUTO_TILES[-1]
            for candidate in _AUTO_TILES:
                if tiling == "on" and candidate > DEFAULT_TILE:
                    continue  # forced on with plenty of memory: still tile, at the default size
                need = self.estimate_peak_bytes(candidate, candidate, batch=batch, decode=decode)
                if decode:  # the whole frame still passes the latent-resolution stages (for exact attention)
                    item = torch.empty((), dtype=self.dtype).element_size()
                    need += batch * (12 * self.decoder.conv1.out_channels * height * width * item
                                     + 4 * candidate * candidate * height * width)
                if need <= 0.7 * budget:
                    tile_size = candidate
                    break
        if tile_size < 2:
            raise ValueError(f"tile_size is in latent pixels (8 video px each) and must be >= 2, got {tile_size}")
        overlap = max(1, tile_size // 3) if tile_overlap is None else tile_overlap
        if not 0 <= overlap <= tile_size // 2:
            raise ValueError(f"tile_overlap must be in [0, tile_size/2] latent px, got {overlap} for tile {tile_size}")
        if height <= tile_size and width <= tile_size:
            return None
        # The outer third of each overlap gets no weight (a tile's border effects live there); the blend
        # ramp runs across the middle third.
        scale = SPATIAL_FACTOR if decode else 1  # decode blends at video resolution, encode at latent resolution
        return plan_tiles(height, width, tile=tile_size, overlap=overlap, scale=scale, margin=(overlap - max(1, overlap // 6)) // 2)

    # -- public API ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(
        self,
        latent: torch.Tensor,
        *,
        tiling: Tiling = "auto",
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        on_frame: ProgressCallback | None = None,
        out_device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Normalised latent [B,16,T,h,w] -> video [B,3,1+4(T-1),8h,8w] float32 in [-1,1] (on `out_device`).

        Streams one latent frame at a time; `on_frame(done, total)` is called after each step (a step is one
        latent frame of one tile). `tile_size`/`tile_overlap` are in latent px. The result is a [B,3,F,H,W]
        view of a channels-last [B,F,H,W,3] buffer, so `interop.video_to_image` needs no copy.
        """
        if latent.ndim != 5 or latent.shape[1] != self.z_dim:
            raise ValueError(f"expected a Wan2.1 latent [B, {self.z_dim}, T, h, w], got shape {tuple(latent.shape)}")
        b, _, t_lat, h, w = latent.shape
        tiles = self._plan(h, w, batch=b, decode=True, tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap)
        s = SPATIAL_FACTOR
        buffer = torch.empty(b, video_frames(t_lat), h * s, w * s, 3, dtype=torch.float32, device=out_device)
        video = buffer.permute(0, 4, 1, 2, 3)
        if tiles is not None:
            buffer.zero_()
        total, done = t_lat * (len(tiles) if tiles else 1), 0
        for tile in tiles or [None]:
            cache, tile_cache = _Cache(), _Cache()
            if tile is not None:
                (ys, xs), (out_ys, out_xs) = tile.src, tile.dst
                weight = tile.weight.to(self.device)
            for i in range(t_lat):
                f0 = 0 if i == 0 else video_frames(i)
                if tile is None:
                    frames = self._decode_step(latent[:, :, i : i + 1], cache)
                    video[:, :, f0 : f0 + frames.shape[2]] = frames
                else:
                    frames = self._decode_step(latent[:, :, i : i + 1], cache, tile_cache, (ys, xs))
                    video[:, :, f0 : f0 + frames.shape[2], out_ys, out_xs] += (frames * weight).to(out_device)
                del frames
                done += 1
                if on_frame is not None:
                    on_frame(done, total)
        return video

    @torch.no_grad()
    def encode(
        self,
        video: torch.Tensor,
        *,
        tiling: Tiling = "auto",
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        on_frame: ProgressCallback | None = None,
        out_device: torch.device | str = "cpu",
    ) -> torch.Tensor:
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
        tiles = self._plan(h, w, batch=b, decode=False, tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap)
        out = torch.zeros(b, self.z_dim, t_lat, h, w, dtype=torch.float32, device=out_device)
        total, done = t_lat * (len(tiles) if tiles else 1), 0
        for tile in tiles or [None]:
            cache = _Cache()
            ys, xs = tile.src if tile is not None else (slice(0, h), slice(0, w))
            pys, pxs = slice(ys.start * s, ys.stop * s), slice(xs.start * s, xs.stop * s)
            for i in range(t_lat):
                f0, f1 = (0, 1) if i == 0 else (1 + TEMPORAL_FACTOR * (i - 1), 1 + TEMPORAL_FACTOR * i)
                mu = self._encode_step(video[:, :, f0:f1, pys, pxs], cache)
                if tile is None:
                    out[:, :, i : i + 1] = mu
                else:
                    out[:, :, i : i + 1, ys, xs] += (mu * tile.weight.to(mu.device)).to(out_device)
                done += 1
                if on_frame is not None:
                    on_frame(done, total)
        return out
