"""Size rules of Wan2.1-VAE videos: 4n+1 frames <-> n+1 latent frames, 8x spatial compression, 2x2 DiT patches."""

from __future__ import annotations

from ..config import LATENT_CHANNELS, VAE_STRIDE

PIXEL_MULTIPLE = VAE_STRIDE[1] * 2  # 8x VAE downsampling, then the DiT's 2x2 patches


def latent_frames(frames: int) -> int:
    """Latent frames of a 4n+1-frame video (n+1); other counts raise a ValueError naming the nearest valid ones."""
    problem = frames_problem(frames, "a Wan2.1 VAE video")
    if problem:
        raise ValueError(f"{problem} (trim or pad the clip; nothing is dropped silently)")
    return (frames - 1) // VAE_STRIDE[0] + 1


def video_frames(latent_frames_: int) -> int:
    """Frames a latent of `latent_frames_` frames decodes to (1 + 4 per further latent frame)."""
    if latent_frames_ < 1:
        raise ValueError(f"a Wan latent needs at least 1 frame, got {latent_frames_}")
    return 1 + VAE_STRIDE[0] * (latent_frames_ - 1)


def latent_shape(width: int, height: int, frames: int, batch: int = 1) -> tuple[int, int, int, int, int]:
    """[batch, 16, latent frames, height/8, width/8]."""
    return (batch, LATENT_CHANNELS, latent_frames(frames), height // VAE_STRIDE[1], width // VAE_STRIDE[2])


def nearest_valid_frames(frames: int) -> list[int]:
    """The 4n+1 frame counts around `frames` (one or two of them)."""
    below = max(1, frames - (frames - 1) % 4)
    return [below] if below == frames else [below, below + 4]


def frames_problem(frames: int, what: str = "length") -> str | None:
    """A user-facing message when `frames` is not 4n+1 (4n+1 video frames <-> n+1 latent frames), else None."""
    if frames >= 1 and (frames - 1) % VAE_STRIDE[0] == 0:
        return None
    options = " or ".join(str(n) for n in nearest_valid_frames(max(frames, 1)))
    return f"{what} must be 4n+1 frames (1, 5, 9, ..., 81), got {frames}; try {options}"


def size_problem(width: int, height: int, frames: int, *, max_size: int = 4096, max_frames: int = 1025) -> str | None:
    """A user-facing message for an unusable video size, else None."""
    for name, value in (("width", width), ("height", height)):
        if value < PIXEL_MULTIPLE or value > max_size:
            return f"{name} must be between {PIXEL_MULTIPLE} and {max_size} pixels, got {value}"
        if value % PIXEL_MULTIPLE:
            lower = value - value % PIXEL_MULTIPLE
            return (f"{name} must be a multiple of {PIXEL_MULTIPLE} (8x VAE downsampling, then 2x2 patches), got {value}; "
                    f"try {max(lower, PIXEL_MULTIPLE)} or {lower + PIXEL_MULTIPLE}")
    if frames > max_frames:
        return f"length must be at most {max_frames} frames, got {frames}"
    return frames_problem(frames)
