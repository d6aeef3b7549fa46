"""``lmul_onnx.output_paths``: what may be written, and writing it atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmul_onnx.output_paths import OutputPathError, atomic_write_text, check_output, staged_files


def test_protected_files_however_spelled(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w")
    os.link(weights, tmp_path / "hard.bin")
    protected = [(weights, "the weights")]
    for spelling in ("weights.bin", "sub/../weights.bin", "./weights.bin", "hard.bin"):
        with pytest.raises(OutputPathError, match="is the weights"):
            check_output(tmp_path / spelling, protected=protected, overwrite=True)


def test_symlink_existing_and_folder(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    with pytest.raises(OutputPathError, match="symbolic link"):
        check_output(tmp_path / "link", overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="pass --overwrite"):
        check_output(tmp_path / "f")
    assert check_output(tmp_path / "f", overwrite=True) == tmp_path / "f"
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output(tmp_path, overwrite=True)
    with pytest.raises(OutputPathError, match="not a folder"):
        check_output(tmp_path / "f" / "inside", overwrite=True)


def test_staged_files_move_together_or_not_at_all(tmp_path: Path) -> None:
    targets = [tmp_path / "new" / "deep" / "a", tmp_path / "new" / "deep" / "b"]
    with pytest.raises(RuntimeError), staged_files(targets) as staged:
        staged[targets[0]].write_text("a")
        raise RuntimeError("the writer failed")
    assert not (tmp_path / "new").exists()
    with staged_files(targets) as staged:
        for target in targets:
            staged[target].write_text(target.name)
    assert [t.read_text() for t in targets] == ["a", "b"]
    assert sorted(p.name for p in targets[0].parent.iterdir()) == ["a", "b"]


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
