"""`.cube` LUTs (wan_core.post.lut): parsing per the Adobe/Resolve keywords and float trilinear application, checked
against a textbook per-pixel trilinear reference in float64 and against torch's own 3D grid_sample."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wan_core.post.lut import LUTFileError, apply_lut, identity_cube, parse_cube, read_cube


def cube_text(table: np.ndarray, *, title: str = "test", extra: str = "") -> str:
    """A .cube file for `table` [N, N, N, 3] indexed [r, g, b], rows written red-fastest as the spec orders them."""
    n = table.shape[0]
    lines = ["# written by the test", f'TITLE "{title}"', f"LUT_3D_SIZE {n}", extra, ""]
    for b, g, r in itertools.product(range(n), repeat=3):
        lines.append(" ".join(f"{v:.9f}" for v in table[r, g, b]))
    return "\n".join(lines) + "\n"


def identity_table(n: int) -> np.ndarray:
    axis = np.linspace(0, 1, n)
    r, g, b = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([r, g, b], axis=-1)


def textbook_trilinear(table: np.ndarray, rgb: np.ndarray, lo=0.0, hi=1.0) -> np.ndarray:
    """One colour at a time, float64: the cell's 8 corners, interpolated along r, then g, then b."""
    n = table.shape[0]
    out = np.empty_like(rgb, dtype=np.float64)
    for i, colour in enumerate(rgb):
        p = np.clip((colour - lo) / (hi - lo), 0, 1) * (n - 1)
        base = np.minimum(np.floor(p).astype(int), n - 2)
        fr, fg, fb = p - base
        r, g, b = base
        c00 = table[r, g, b] * (1 - fr) + table[r + 1, g, b] * fr
        c10 = table[r, g + 1, b] * (1 - fr) + table[r + 1, g + 1, b] * fr
        c01 = table[r, g, b + 1] * (1 - fr) + table[r + 1, g, b + 1] * fr
        c11 = table[r, g + 1, b + 1] * (1 - fr) + table[r + 1, g + 1, b + 1] * fr
        out[i] = (c00 * (1 - fg) + c10 * fg) * (1 - fb) + (c01 * (1 - fg) + c11 * fg) * fb
    return out


def random_colours(n: int, seed: int = 0, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colours = rng.uniform(lo, hi, size=(n, 3))
    colours[:8] = list(itertools.product((lo, hi), repeat=3))  # the cube's corners too
    return colours


@pytest.mark.parametrize("size", [2, 17, 33])
def test_identity_lut_file_round_trip_is_exact_within_1_255(tmp_path, size):
    path = tmp_path / "identity.cube"
    path.write_text(cube_text(identity_table(size)))
    frames = torch.rand(2, 16, 24, 3, generator=torch.Generator().manual_seed(size))
    out = apply_lut(frames, read_cube(path))
    # 1/255 is the bound; the float32 interpolation of a 9-decimal identity table is within 1e-6.
    assert (out - frames).abs().max().item() <= 1e-6 < 1 / 255
    assert (apply_lut(frames, identity_cube(size)) - frames).abs().max().item() <= 1e-6


def test_known_lut_matches_textbook_trilinear_within_1e_5():
    rng = np.random.default_rng(1)
    table = rng.uniform(-0.1, 1.1, size=(5, 5, 5, 3))  # a strongly non-linear look, also leaving 0..1
    lut = parse_cube(cube_text(table))
    colours = random_colours(500)
    ours = apply_lut(torch.tensor(colours, dtype=torch.float32), lut).double().numpy()
    assert np.abs(ours - textbook_trilinear(table, colours)).max() <= 1e-5  # float32 arithmetic on 0..1 values


def test_known_lut_matches_torch_grid_sample():
    rng = np.random.default_rng(2)
    table = rng.uniform(0, 1, size=(9, 9, 9, 3))
    lut = parse_cube(cube_text(table))
    colours = torch.tensor(random_colours(300, seed=3), dtype=torch.float32)
    # grid_sample's volume is [C, D, H, W] = [3, b, g, r] and its grid's last axis is (x, y, z) = (r, g, b).
    volume = torch.tensor(table, dtype=torch.float64).permute(3, 2, 1, 0)[None]
    grid = (colours.double() * 2 - 1)[None, :, None, None, :]
    reference = F.grid_sample(volume, grid, mode="bilinear", align_corners=True)[0, :, :, 0, 0].T
    assert (apply_lut(colours, lut).double() - reference).abs().max().item() <= 1e-5


def test_rows_are_read_red_fastest():
    # Row k of a size-2 cube is (r, g, b) = (k % 2, k // 2 % 2, k // 4): a LUT storing that order is the identity.
    rows = "\n".join(f"{k % 2} {k // 2 % 2} {k // 4}" for k in range(8))
    lut = parse_cube(f"LUT_3D_SIZE 2\n{rows}\n")
    colour = torch.tensor([[0.9, 0.2, 0.4]])
    assert torch.allclose(apply_lut(colour, lut), colour, atol=1e-6)


def test_domain_scales_inputs_and_clamps_outside():
    table = identity_table(3)  # stores the position 0..1 in the domain
    lut = parse_cube(cube_text(table, extra="DOMAIN_MIN 0 0 0\nDOMAIN_MAX 2 4 1"))
    colours = torch.tensor([[1.0, 1.0, 0.5], [3.0, -1.0, 0.25]])
    expected = torch.tensor([[0.5, 0.25, 0.5], [1.0, 0.0, 0.25]])
    assert torch.allclose(apply_lut(colours, lut), expected, atol=1e-6)


def test_resolve_input_range_keyword():
    lut = parse_cube(cube_text(identity_table(3), extra="LUT_3D_INPUT_RANGE 0 2"))
    assert torch.allclose(apply_lut(torch.tensor([[1.0, 2.0, 0.5]]), lut), torch.tensor([[0.5, 1.0, 0.25]]), atol=1e-6)


def test_1d_lut_interpolates_each_channel_linearly():
    n = 11
    x = np.linspace(0, 1, n)
    table = np.stack([x ** 2.2, x ** 0.5, 1 - x], axis=-1)
    text = "LUT_1D_SIZE 11\n" + "\n".join(" ".join(f"{v:.9f}" for v in row) for row in table) + "\n"
    lut = parse_cube(text)
    colours = random_colours(200, seed=4)
    ours = apply_lut(torch.tensor(colours, dtype=torch.float32), lut).double().numpy()
    reference = np.stack([np.interp(colours[:, c], x, table[:, c]) for c in range(3)], axis=-1)
    assert np.abs(ours - reference).max() <= 1e-6


def test_shaper_1d_then_3d():
    shaper = "\n".join(f"{v:.9f} {v:.9f} {v:.9f}" for v in np.linspace(0, 1, 5) ** 2)
    table = np.random.default_rng(5).uniform(0, 1, size=(3, 3, 3, 3))
    body = cube_text(table).split("LUT_3D_SIZE 3\n", 1)[1]
    lut = parse_cube(f"LUT_1D_SIZE 5\nLUT_3D_SIZE 3\n{shaper}\n{body}")
    assert lut.describe() == "untitled: 1D 5 + 3D 3"
    colours = random_colours(100, seed=6)
    squared = np.stack([np.interp(colours[:, c], np.linspace(0, 1, 5), np.linspace(0, 1, 5) ** 2) for c in range(3)], -1)
    ours = apply_lut(torch.tensor(colours, dtype=torch.float32), lut).double().numpy()
    assert np.abs(ours - textbook_trilinear(table, squared)).max() <= 1e-5


@pytest.mark.parametrize("text, message", [
    ("LUT_3D_SIZE 2\n0 0 0\n1 1 1\n", r"look\.cube: expected 8 table rows \(2³ \(3D\)\), found 2"),
    ("LUT_3D_SIZE 2\nLUT_SHAPE cube\n", r"look\.cube line 2: unknown keyword 'LUT_SHAPE'"),
    ("LUT_3D_SIZE 2\n0 0 0\nTITLE \"late\"\n", r"look\.cube line 3: keyword 'TITLE' after the table rows"),
    ("0 0 0\n", r"look\.cube: no LUT_3D_SIZE or LUT_1D_SIZE line"),
    ("LUT_3D_SIZE 300\n", r"look\.cube line 1: the size must be one whole number from 2 to 256"),
    ("LUT_3D_SIZE 2\n0 0 zero\n", r"look\.cube line 2: expected 3 numbers"),
    ("LUT_3D_SIZE 2\nDOMAIN_MIN 1 1 1\nDOMAIN_MAX 0 1 1\n" + "0 0 0\n" * 8, r"domain minimum .* must be below"),
])
def test_malformed_files_name_the_file_line_and_problem(text, message):
    with pytest.raises(LUTFileError, match=message):
        parse_cube(text, "look.cube")
