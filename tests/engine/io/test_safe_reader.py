"""wan_core.io.safe and the checkpoint reader on top of it: exact refusals, contained shards, file identity."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_core.io.checkpoint import CheckpointError, file_identity, open_checkpoint, read_index, require_float
from wan_core.io.reader import byte_locations
from wan_core.io.safe import contained, shown


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def header_of(path: Path) -> tuple[int, dict, bytes]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8: 8 + n]), data[8 + n:]


def rewrite(path: Path, header: dict, body: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


def test_a_header_length_from_another_format_is_refused_without_echoing_the_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\0" * 64)  # a GGUF file renamed to .safetensors
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "first 8 bytes" in message and "72-byte file" in message
    assert str(int.from_bytes(b"GGUF\x03\x00\x00\x00", "little")) not in message


def test_dtype_that_does_not_match_the_byte_length_is_refused(tmp_path):
    path = write(tmp_path / "a.safetensors", {"w": torch.zeros(4, 4, dtype=torch.float16)})
    _, header, body = header_of(path)
    header["w"]["dtype"] = "F32"
    rewrite(path, header, body)
    with pytest.raises(CheckpointError, match=r"tensor 'w' is F32 of shape \[4, 4\], which takes 64 bytes, but its "
                                              r"offsets span 32 bytes"):
        open_checkpoint(path)


@pytest.mark.parametrize("offsets, found", [([-2, 30], "data_offsets [-2, 30]"), ([32, 0], "data_offsets [32, 0]")])
def test_negative_and_reversed_offsets_are_refused(tmp_path, offsets, found):
    path = write(tmp_path / "a.safetensors", {"w": torch.zeros(16, dtype=torch.float16)})
    _, header, body = header_of(path)
    header["w"]["data_offsets"] = offsets
    rewrite(path, header, body)
    with pytest.raises(CheckpointError, match=found.replace("[", r"\[").replace("]", r"\]")):
        open_checkpoint(path)


def test_overlapping_tensors_are_refused(tmp_path):
    path = write(tmp_path / "a.safetensors", {"a": torch.zeros(8), "b": torch.ones(8)})
    _, header, body = header_of(path)
    header["b"]["data_offsets"] = header["a"]["data_offsets"]
    rewrite(path, header, body)
    with pytest.raises(CheckpointError, match="overlap"):
        open_checkpoint(path)


def test_the_tensor_reader_gets_its_offsets_from_the_validated_header(tmp_path):
    path = write(tmp_path / "a.safetensors", {"a": torch.zeros(8), "b": torch.ones(4)})
    n, header, _ = header_of(path)
    locations = byte_locations(path)
    assert locations == {"a": (path, 8 + n + header["a"]["data_offsets"][0], 32),
                         "b": (path, 8 + n + header["b"]["data_offsets"][0], 16)}


def test_index_shards_stay_inside_their_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    write(folder / "s1.safetensors", {"a": torch.zeros(2)})
    write(tmp_path / "outside.safetensors", {"b": torch.zeros(2)})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"names the shard '\.\./outside\.safetensors', which lies outside"):
        read_index(index)
    with pytest.raises(CheckpointError, match="lies outside"):
        open_checkpoint(folder)
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": str(tmp_path / "outside.safetensors")}}))
    with pytest.raises(CheckpointError, match="lies outside"):
        byte_locations(folder)


def test_contained_allows_subfolders_and_symlinks_placed_in_the_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    assert contained(folder, "sub/./s.safetensors", folder / "i.json") == folder / "sub" / "s.safetensors"
    target = write(tmp_path / "elsewhere.safetensors", {"a": torch.zeros(2)})
    (folder / "linked.safetensors").symlink_to(target)  # as ComfyUI follows links in its model folders
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "linked.safetensors"}}))
    assert open_checkpoint(folder).keys() == ["a"]


def test_shown_quotes_escapes_and_shortens_names_from_files():
    assert shown("a\x1b[2Jb\n") == repr("a\\x1b[2Jb\\n")
    assert len(shown("x" * 500)) == 82 and shown("x" * 500).endswith("...'")


def test_pickles_that_would_run_code_get_our_message_not_torchs_advice(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))

    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(path)
    message = str(caught.value)
    assert "never runs code from model files" in message and "weights_only=False" not in message
    assert "posix" not in message and "system" not in message


def test_integer_weights_are_refused_with_what_was_found(tmp_path):
    path = write(tmp_path / "a.safetensors", {"w": torch.zeros(4, dtype=torch.int32), "b": torch.zeros(2)})
    ckpt = open_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"weight 'w' of the test model is stored as int32 \(1 weights are "
                                              r"integer\); model weights must be floating point"):
        require_float(ckpt, ["w", "b"], "test model")
    require_float(ckpt, ["b"], "test model")


def test_a_file_replaced_with_equal_size_and_mtime_has_a_new_identity(tmp_path):
    path = write(tmp_path / "m.safetensors", {"w": torch.zeros(64)})
    before = file_identity(path)
    stat = path.stat()
    time.sleep(0.01)
    replacement = write(tmp_path / "new.safetensors", {"w": torch.ones(64)})  # same size, other weights
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # cp -p / rsync -t keep the mtime
    os.replace(replacement, path)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert file_identity(path) != before
    # Rewritten in place (same inode) and the mtime set back: ctime still moves.
    again = file_identity(path)
    time.sleep(0.01)
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(after.st_atime_ns, after.st_mtime_ns))
    assert file_identity(path) != again
    assert file_identity(path) == file_identity(path)  # and it is stable while nothing changes


def test_a_sharded_index_is_identified_by_its_folder(tmp_path):
    folder = tmp_path / "expert"
    folder.mkdir()
    write(folder / "s1.safetensors", {"a": torch.zeros(2)})
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))
    before = file_identity(index)
    shutil.copy2(folder / "s1.safetensors", tmp_path / "copy.safetensors")
    os.replace(tmp_path / "copy.safetensors", folder / "s1.safetensors")  # a shard replaced, the index untouched
    assert file_identity(index) != before and file_identity(index)[0] == str(folder.resolve())


def test_a_missing_file_has_our_message(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such file or folder"):
        file_identity(tmp_path / "gone.safetensors")
