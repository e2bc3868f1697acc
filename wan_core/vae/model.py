"""The Wan2.1 video VAE network (used by Wan2.2-T2V-A14B), in the official key layout.

Structure (official wan/modules/vae2_1.py): causal 3-D convolutions that remember the last two input frames
of the previous chunk, RMS norms, spatial/temporal resampling, single-head per-frame attention in the middle
blocks. 16 latent channels, 4x temporal and 8x spatial compression: 4n+1 video frames <-> n+1 latent frames.
`WanVAE.decode_step` / `encode_step` run one streamed chunk; the runner that loops over a clip in bounded
memory (and tiles large frames) is `vae/streaming.py`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..memory.pace import banded, current, empty_as, map_rows
from .latent_format import WAN21_LATENT_MEAN, denormalize, normalize

CACHE_FRAMES = 2  # a causal conv with a 3-frame kernel needs the 2 frames before the chunk
TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 8
LATENT_CHANNELS = len(WAN21_LATENT_MEAN)


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
        pt, ph, pw = _triple(padding)
        # Spatial zero padding is the convolution's own (no padded copy of the input); only time is causal.
        super().__init__(in_channels, out_channels, _triple(kernel_size), stride=_triple(stride), padding=(0, ph, pw))
        self.time_pad = 2 * pt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The conv of a whole clip (zeros before its first frame); streamed chunks go through `_causal`."""
        if self.time_pad > 0:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0))
        return paced_conv(self, x)


# ATen sends a 5-D float32 CPU convolution to oneDNN only when N * C * T * H > 20480 (ConvParams::use_mkldnn) and to
# its native kernel otherwise, measured 3.5-4x slower for the VAE's 96-channel convs on a band, a small tile or one
# frame; calling oneDNN directly gives every such conv (and the 2-D resampling convs) the fast kernel, with outputs
# in its input's layout (bit-identical where ATen picks it itself).
_ONEDNN = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """x laid out channels-last (NDHWC / NHWC), as oneDNN reads and writes it without reordering.

    oneDNN reorders a contiguous (NCDHW) input into a blocked copy, and its output back, on every call: measured one
    input's worth more memory and 1.4x the time of the channels-last call for a 96-channel 128x192 frame. So on
    that path every activation is channels-last from the first conv on (each output is laid out as its input)."""
    x = x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    n, c, *space = x.shape
    strides = [c * math.prod(space), 1, *(c * math.prod(space[i + 1:]) for i in range(len(space)))]
    # A size-1 dim's stride is free (a view of one frame keeps its clip's), but ATen infers the layout from the order
    # of all strides (suggest_memory_format): give such a view the strides of a channels-last tensor of its shape.
    return x if list(x.stride()) == strides else x.as_strided(x.shape, strides)


def _conv(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor, padding: Sequence[int], weight: torch.Tensor,
          bias: torch.Tensor | None) -> torch.Tensor:
    """The convolution of x by weight and bias with this zero padding (conv's stride, dilation, groups)."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == x.dtype:
        return torch.mkldnn_convolution(_channels_last(x), weight, bias, padding, conv.stride, conv.dilation,
                                        conv.groups)
    call = F.conv3d if x.dim() == 5 else F.conv2d
    return call(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)


def paced_conv(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, extra: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
               into: torch.Tensor | None = None) -> torch.Tensor:
    """`conv(x)` (without its own time padding; with `weight` and `bias` in place of its own when a weight is
    given; plus the convolution of each `extra` (input, weight) term, summed in that order; added in place to
    `into` when given, band by band), in bands of output rows when the run's pace (memory.pace) says one call is
    too long, so Cancel is seen within large frames; one call, with the conv's own padding, otherwise."""
    h = x.dim() - 2  # the height dimension of [B, C, H, W] or [B, C, T, H, W]
    if weight is None:
        weight, bias = conv.weight, conv.bias
    inputs, weights = [x, *(t for t, _ in extra)], [weight, *(w for _, w in extra)]
    kernel, stride, padding = tuple(weight.shape[2:]), conv.stride, conv.padding
    outputs = x.shape[0] * weight.shape[0]
    for i, size in enumerate(x.shape[2:]):
        outputs *= max(0, (size + 2 * padding[i] - kernel[i]) // stride[i] + 1)
    work = 2.0 * outputs * conv.in_channels // conv.groups * math.prod(kernel) * len(inputs)
    rows = (x.shape[h] + 2 * padding[-2] - kernel[-2]) // stride[-2] + 1

    pace = current()
    per_band = pace.rows(rows, work / max(rows, 1), x.device, elements_per_row=outputs / max(rows, 1))
    if per_band >= rows:
        pace.tick()
        return _conv_sum(conv, inputs, weights, bias, padding, into)
    bands = -(-rows // per_band)
    if conv.groups == 1 and weight.shape[0] >= CHANNEL_BAND * bands:
        return _channel_bands(conv, inputs, weights, bias, padding, bands, into)
    band_padding = (*padding[:-2], 0, padding[-1])  # the rows' zero padding is the bands' (banded pads edge bands)
    return banded(lambda bands: _conv_sum(conv, bands, weights, bias, band_padding), inputs, dim=h, kernel=kernel[-2], stride=stride[-2],
                  work=work, outputs=outputs, padding=padding[-2], into=into)


def _conv_sum(conv: nn.Conv2d | nn.Conv3d, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
              bias: torch.Tensor | None, padding: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """The sum of the convolutions of each input by its weight (bias on the first), added to `out` when given; each
    term is added as soon as it exists, so one term's output is alive at a time."""
    for i, (x, w) in enumerate(zip(inputs, weights)):
        term = _conv(conv, x, padding, w, bias if i == 0 else None)
        out = term if out is None else out.add_(term)
        del term
    return out  # type: ignore[return-value]


# A conv split for the cancel checks into a few bands of output channels reads its whole input in each band (rows
# would each need a copy of their input rows: C x rows x W, about half a frame per conv at two bands); bands keep at
# least this many output channels so that oneDNN's channel blocking stays whole. Many bands (large frames) use rows.
CHANNEL_BAND = 16


def _channel_bands(conv: nn.Conv2d | nn.Conv3d, inputs: list[torch.Tensor], weights: list[torch.Tensor],
                   bias: torch.Tensor | None, padding: Sequence[int], bands: int,
                   into: torch.Tensor | None) -> torch.Tensor:
    """`paced_conv`'s sum in `bands` bands of output channels, the cancel check before each."""
    width, pace, out = weights[0].shape[0], current(), into
    for k in range(bands):
        lo, hi = k * width // bands, (k + 1) * width // bands
        pace.tick()
        band = ([w[lo:hi] for w in weights], None if bias is None else bias[lo:hi])
        if into is not None:
            _conv_sum(conv, inputs, *band, padding, into[:, lo:hi])
            continue
        part = _conv_sum(conv, inputs, *band, padding)
        if out is None:
            out = empty_as(part, (part.shape[0], width, *part.shape[2:]))
        out[:, lo:hi] = part
    return out  # type: ignore[return-value]


# Streaming a causal conv: a chunk's outputs need the inputs of the chunk's frames and of the CACHE_FRAMES frames
# before it, which the cache keeps as separate contiguous frames (oldest first; fewer, or none, at the clip's start,
# where zeros stand in as the causal padding). Three ways to compute it, by what costs least memory:


def _one_frame(conv: CausalConv3d, x: torch.Tensor, frames: list[torch.Tensor], norm: RMSNorm | None = None,
               fresh: bool = False, into: torch.Tensor | None = None) -> torch.Tensor:
    """A 1-frame chunk (every full-resolution stage of the decoder): one call per time tap on its own input frame,
    summed (the one-call conv's sums in another order, within float rounding of it). No window of 3 frames is
    built, and the input (or its silu(norm(x))) becomes the newest remembered frame without a copy. The oldest
    remembered frame's tap runs first, before the activation exists, and that frame is let go at once: the oldest
    frame and the new activation are never alive together (the full-resolution residual stages' peak)."""
    taps, w, bias = conv.kernel_size[0], conv.weight, conv.bias
    if len(frames) == CACHE_FRAMES:
        oldest = taps - 1 - CACHE_FRAMES
        into, bias = paced_conv(conv, frames.pop(0), w[:, :, oldest:oldest + 1], bias, into=into), None
    if norm is not None:
        x = F.silu(norm(x), inplace=True)
    elif not fresh:  # x becomes a remembered frame: its own tensor (in x's layout), not a view nor written later
        x = x.clone()
    earlier = [(frame, w[:, :, k:k + 1]) for k, frame in zip(range(taps - 2, -1, -1), reversed(frames))]
    out = paced_conv(conv, x, w[:, :, taps - 1:], bias, earlier, into)
    frames.append(x)
    return out


def _window(conv: CausalConv3d, x: torch.Tensor, frames: list[torch.Tensor], norm: RMSNorm | None = None,
            into: torch.Tensor | None = None) -> torch.Tensor:
    """A chunk of several frames (the latent-resolution stages, the encoder): one call on [remembered |
    silu(norm(x)) or x], the activation written straight into that window, its last frames remembered in place of
    the old ones."""
    b, c, t, h, w = x.shape
    window = empty_as(x, (b, c, CACHE_FRAMES + t, h, w))
    if len(frames) < CACHE_FRAMES:
        window.zero_()
    for i, frame in enumerate(frames):
        window[:, :, CACHE_FRAMES - len(frames) + i] = frame[:, :, 0]
    if norm is None:
        window[:, :, CACHE_FRAMES:] = x
    else:
        F.silu(norm(x, out=window[:, :, CACHE_FRAMES:]), inplace=True)
    keep = [window[:, :, j:j + 1] for j in range(t, t + CACHE_FRAMES)]
    if len(frames) == CACHE_FRAMES and frames[0].shape == keep[0].shape:
        for frame, new in zip(frames, keep):
            frame.copy_(new)
    else:
        frames[:] = [new.clone() for new in keep]
    return paced_conv(conv, window, into=into)


def _pending_sums(conv: CausalConv3d, x: torch.Tensor, pending: list[torch.Tensor]) -> torch.Tensor:
    """A conv that narrows the width (the RGB and latent heads): remember the partial sums of its next outputs
    (2 frames of its few output channels) instead of its last inputs (2 frames of its input width, the largest
    single cache at full resolution).

    Each input frame meets every time tap in one call (the taps as output channels); output frame j is then
    tap 0 of frame j-2 + tap 1 of frame j-1 + tap 2 of frame j + bias: the one-call conv's sums in another
    order (within float rounding of it); zero sums before the clip's first frame, as the causal padding.
    """
    taps, width = conv.kernel_size[0], conv.out_channels
    w = conv.weight
    y = paced_conv(conv, x, w.permute(2, 0, 1, 3, 4).reshape(taps * width, w.shape[1], 1, *w.shape[3:]))
    b, _, t, h, w_ = y.shape

    def tap(k: int, j: int) -> torch.Tensor:  # time tap k of input frame j: output channels k * width on
        return y[:, k * width:(k + 1) * width, j:j + 1]

    if not pending or pending[0].shape != (b, width, 1, h, w_):
        pending[:] = [empty_as(y, (b, width, 1, h, w_)).zero_() for _ in range(taps - 1)]  # [k]: for output next + k
    out = empty_as(y, (b, width, t, h, w_))
    for j in range(t):
        torch.add(pending[0], tap(taps - 1, j), out=out[:, :, j:j + 1])
        for k in range(taps - 2):
            pending[k].copy_(pending[k + 1]).add_(tap(taps - 2 - k, j))
        pending[taps - 2].copy_(tap(0, j))
    if conv.bias is not None:
        out.add_(conv.bias.view(1, width, 1, 1, 1))
    return out


def _causal(conv: CausalConv3d, x: torch.Tensor, cache: _Cache | None, norm: RMSNorm | None = None, *,
            fresh: bool = False, into: torch.Tensor | None = None) -> torch.Tensor:
    """`conv(silu(norm(x)))` (or `conv(x)`) on a chunk, continuing the previous chunk through `cache` (None: the
    whole clip, zero-padded in front); added in place to `into` (a residual) when given. `fresh`: x is a tensor
    of its own that nothing else writes, so it may be remembered as is."""
    if cache is None or not conv.time_pad:
        y = conv(x if norm is None else F.silu(norm(x), inplace=True))
        return y if into is None else into.add_(y)
    state = cache.get(conv)
    if state is None:
        state = []
        cache.put(conv, state)
    if conv.out_channels < conv.in_channels:
        y = _pending_sums(conv, x if norm is None else F.silu(norm(x), inplace=True), state)  # type: ignore[arg-type]
        return y if into is None else into.add_(y)
    if x.shape[2] > 1:
        return _window(conv, x, state, norm, into)  # type: ignore[arg-type]
    return _one_frame(conv, x, state, norm, fresh, into)  # type: ignore[arg-type]


class RMSNorm(nn.Module):
    """Channel RMS norm as the official code writes it: F.normalize(x, dim=1) * sqrt(C) * gamma."""

    def __init__(self, dim: int, video: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1) if video else torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The norm of x, written into `out` when given (a slice of a causal conv's window)."""
        # x / max(||x||_2, 1e-12) over channels (not x * rsqrt(mean(x^2) + eps)); fp32 for half inputs. The
        # products are the reference's, (y * scale) * gamma, done in place.
        if x.dtype in (torch.float16, torch.bfloat16) or out is None:
            y = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1).to(x.dtype)
            out = y if out is None else out.copy_(y)
        else:
            F.normalize(x, dim=1, out=out)
        return out.mul_(self.scale).mul_(self.gamma)


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

    def forward(self, x: torch.Tensor, cache: _Cache | None = None, *, owned: bool = False) -> torch.Tensor:
        """The block on a chunk; `owned`: x is the caller's own intermediate, which may become the output (the
        second conv is then added into it band by band, and no separate output tensor is made)."""
        r = self.residual
        h = self.shortcut(x) if self.shortcut is not None else x
        y = _causal(r[2], x, cache, r[0])
        y = F.silu(r[3](y, out=y), inplace=True)  # the first conv's output (its own tensor) becomes its activation
        if h is x and not owned:
            return _causal(r[6], y, cache, fresh=True).add_(h)
        return _causal(r[6], y, cache, fresh=True, into=h)


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
            qkv = _pixels_by_channels(qkv)
            q, k, v = qkv.chunk(3, dim=-1)
            x_out, (h_out, w_out) = x, (h, w)
        else:
            ys, xs = region
            k, v = _pixels_by_channels(qkv[:, c:]).chunk(2, dim=-1)
            q = qkv[:, :c, ys, xs]
            h_out, w_out = q.shape[-2:]
            q = _pixels_by_channels(q)
            x_out = x[:, :, :, ys, xs]
        # Queries in chunks sized by the run's pace (the same result: each query row attends to all k, v).
        y = map_rows(lambda rows: F.scaled_dot_product_attention(rows, k, v), q, dim=2,
                     work_per_row=4 * k.shape[0] * k.shape[2] * k.shape[3])
        y = self.proj(y.squeeze(1).transpose(1, 2).reshape(b * t, c, h_out, w_out))
        return x_out + y.reshape(b, t, c, h_out, w_out).transpose(1, 2)


def _pixels_by_channels(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, 1, H*W, C], contiguous (a view of a channels-last x): the attention's one-head rows."""
    return x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()


def _fold(w: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """A 3-tap kernel along `dim` as one phase of a nearest 2x upsampled input sees it: phase 0 reads input
    (i-1, i) with taps (w0, w1 + w2), phase 1 reads (i, i+1) with (w0 + w1, w2)."""
    a, b, c = w.unbind(dim)
    return torch.stack([a, b + c] if phase == 0 else [a + b, c], dim)


def _upsampled_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv (3x3, zero padding 1) of x [N,C,H,W] upsampled 2x by nearest-exact (the reference's resample), without
    the upsampled input: each of the 4 output pixel phases is a 2x2 conv of x itself with summed taps (4x less
    input held and 2.25x fewer multiply-adds; the same sums with some weights added first, within float rounding of
    the reference), one phase at a time, written into its pixels of the output as it is made, so one phase's
    output (a quarter of the result) is the only temporary."""
    w = conv.weight.float() if conv.weight.dtype in (torch.float16, torch.bfloat16) else conv.weight  # sums in fp32+
    co, (n, _, h, w_) = w.shape[0], x.shape
    out = None
    for a in range(2):
        for b in range(2):
            # padding 1 gives (h+1) x (w+1) outputs; phase (a, b)'s pixels are the window starting at (a, b)
            y = paced_conv(conv, x, _fold(_fold(w, 2, a), 3, b).to(conv.weight.dtype), conv.bias)
            if out is None:
                out = empty_as(y, (n, co, 2 * h, 2 * w_))
            out.view(n, co, h, 2, w_, 2)[:, :, :, a, :, b] = y[:, :, a:a + h, b:b + w_]
            del y
    return out  # type: ignore[return-value]


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
        if self.mode.startswith("up"):
            return self.spatial(self.upsample_time(x, cache))
        y = self.spatial(x)
        if self.mode == "downsample3d" and cache is not None:
            previous = cache.get(self)
            cache.put(self, y[:, :, -1:].clone())
            if previous is not None:  # the first chunk's single frame passes through unchanged
                y = self.time_conv(torch.cat([previous, y], dim=2))  # type: ignore[list-item]
        return y

    def upsample_time(self, x: torch.Tensor, cache: _Cache | None) -> torch.Tensor:
        """upsample3d on a streamed chunk: every frame after the clip's first becomes two; otherwise x itself."""
        if self.mode != "upsample3d" or cache is None:
            return x
        if cache.get(self) is None:
            cache.put(self, True)  # first chunk: its frame is kept as is (official 'Rep')
            return x
        b, c, t, h, w = x.shape
        # The conv's 2C channels hold two output frames per input frame (channels k * C on: frame 2i + k): interleave
        # them in time.
        y = _causal(self.time_conv, x, cache)
        out = empty_as(y, (b, c, 2 * t, h, w))
        pairs = out.view(b, c, t, 2, h, w)
        for k in range(2):
            pairs[:, :, :, k] = y[:, k * c:(k + 1) * c]
        return out

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """The per-frame 2x resampling and its conv (upsample: nearest then conv; downsample: strided conv)."""
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = _upsampled_conv(self.resample[1], y) if self.mode.startswith("up") else paced_conv(
            self.resample[1], F.pad(y, (0, 1, 0, 1)))
        return y.view(b, t, *y.shape[1:]).transpose(1, 2)


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
            # x is always this loop's own intermediate (from conv1 on): a residual block may add into it.
            x = layer(x, cache, owned=True) if isinstance(layer, ResidualBlock) else layer(x, cache)
        return _causal(self.head[2], x, cache, self.head[0])  # type: ignore[arg-type]


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
        x = self.latent_stages(x, cache, region=region)
        return self.upper_stages(x, cache if tile_cache is None else tile_cache)

    def latent_stages(self, x: torch.Tensor, cache: _Cache | None, *,
                      region: tuple[slice, slice] | None = None) -> torch.Tensor:
        """conv1, the first middle block and the middle attention, on the whole (latent-resolution) frame; with
        `region` only that window of the attention's output is returned (its keys still see every pixel)."""
        x = _causal(self.conv1, x, cache)
        x = self.middle[0](x, cache)
        return self.middle[1](x, region=region)

    def upper_stages(self, x: torch.Tensor, cache: _Cache | None) -> torch.Tensor:
        """Everything after the middle attention, up to the RGB head."""
        return self._from(x, [self.middle[2], *self.upsamples], cache)

    def _from(self, x: torch.Tensor, layers: list[nn.Module], cache: _Cache | None, owned: bool = False) -> torch.Tensor:
        """`layers`, then the head, on a chunk. From a temporal upsample's interleave on every stage is per-frame or
        causal through the cache, so a streamed chunk goes on frame by frame (in time order): the 2x-8x activations
        hold one frame, not two or four."""
        for i, layer in enumerate(layers):
            if cache is not None and isinstance(layer, Resample) and layer.mode == "upsample3d":
                x = layer.upsample_time(x, cache)
                outs = [self._from(layer.spatial(x[:, :, j:j + 1]), layers[i + 1:], cache, True)
                        for j in range(x.shape[2])]
                return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
            # x is this loop's own intermediate past its first layer (and from a spatial upsample on): a residual
            # block may add into it.
            x = layer(x, cache, owned=owned or i > 0) if isinstance(layer, ResidualBlock) else layer(x, cache)
        return _causal(self.head[2], x, cache, self.head[0])  # type: ignore[arg-type]


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

    # -- one streamed step (the runner in streaming.py loops over these) ---------------------------------------------------------------------------------

    def decode_step(
        self, z: torch.Tensor, cache: _Cache, tile_cache: _Cache | None = None, region: tuple[slice, slice] | None = None
    ) -> torch.Tensor:
        """One normalised latent frame [B,16,1,h,w] -> 1 (first step) or 4 video frames (of `region`), clamped, fp32."""
        z = denormalize(z.to(self.device, torch.float32)).to(self.dtype)
        x = self.decoder(self.conv2(z), cache, tile_cache=tile_cache, region=region)
        return x.float().clamp_(-1.0, 1.0)

    def decode_features(self, z: torch.Tensor, cache: _Cache) -> torch.Tensor:
        """One normalised latent frame -> the decoder's latent-resolution features (what every tile starts from)."""
        z = denormalize(z.to(self.device, torch.float32)).to(self.dtype)
        return self.decoder.latent_stages(self.conv2(z), cache)

    def decode_from_features(self, features: torch.Tensor, cache: _Cache) -> torch.Tensor:
        """`decode_features` output (or a window of it) -> 1 or 4 video frames, clamped, fp32."""
        return self.decoder.upper_stages(features.to(self.device, self.dtype), cache).float().clamp_(-1.0, 1.0)

    def encode_step(self, x: torch.Tensor, cache: _Cache) -> torch.Tensor:
        """One chunk of 1 or 4 frames in [-1,1] -> its normalised latent mean [B,16,1,h,w], fp32."""
        h = self.encoder(x.to(self.device, self.dtype), cache)
        # conv1 is 1x1x1: computing only its first z_dim outputs (the mean) gives the same numbers.
        mu = F.conv3d(h, self.conv1.weight[: self.z_dim], self.conv1.bias[: self.z_dim])
        return normalize(mu.float())

    # -- the runner (vae/streaming.py imports this module, so it is imported at call time) -------------------

    def estimate_peak_bytes(self, height: int, width: int, *, batch: int = 1, decode: bool = True) -> int:
        """Estimated working memory of one untiled streamed run (see `streaming.estimate_peak_bytes`)."""
        from . import streaming

        return streaming.estimate_peak_bytes(self, height, width, batch=batch, decode=decode)

    def decode(self, latent: torch.Tensor, **options) -> torch.Tensor:
        """Normalised latent [B,16,T,h,w] -> video [B,3,F,8h,8w] in [-1,1], streamed (see `streaming.decode`)."""
        from . import streaming

        return streaming.decode(self, latent, **options)

    def encode(self, video: torch.Tensor, **options) -> torch.Tensor:
        """Video [B,3,4n+1,H,W] in [-1,1] -> normalised latent mean, streamed (see `streaming.encode`)."""
        from . import streaming

        return streaming.encode(self, video, **options)
