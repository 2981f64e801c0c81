"""Atomic writes: the target is complete or untouched, and nothing is left beside it."""

import pytest

from adatsq.files import atomic_dir, atomic_path, check_output, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "policy.json"
    write_json({"a": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == '{\n "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


def test_folders_are_replaced_only_when_asked(tmp_path):
    target = tmp_path / "art"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["x"]
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_output_rules(tmp_path):
    existing = tmp_path / "samples.png"
    existing.write_bytes(b"png")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        check_output(existing, "file")
    assert check_output(existing, "file", overwrite=True) == existing.resolve()
    with pytest.raises(ValueError, match="is a folder"):
        check_output(tmp_path, "file", overwrite=True)
    with pytest.raises(ValueError, match="is a file"):
        check_output(existing, "dir", overwrite=True)
    artifact = tmp_path / "art"
    artifact.mkdir()
    with pytest.raises(ValueError, match="being read"):
        check_output(artifact / "model.safetensors", "file", overwrite=True, inputs=(artifact,))
    with pytest.raises(ValueError, match="being read"):
        check_output(artifact, "dir", overwrite=True, inputs=("flux-digits", artifact))
    with pytest.raises(ValueError, match="not a folder"):
        check_output(existing / "under-a-file.png", "file")
    with pytest.raises(ValueError, match="kind"):
        check_output(existing, "link")


def test_stale_temporaries_of_the_output_are_removed(tmp_path):
    (tmp_path / ".art.abc123.tmp").mkdir()  # a killed atomic_dir write of "art"
    (tmp_path / ".samples.png.xyz.tmp.png").write_text("half")
    (tmp_path / ".other.q.tmp").mkdir()  # another output's: kept
    check_output(tmp_path / "art", "dir")
    check_output(tmp_path / "samples.png", "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.q.tmp"]


def test_written_files_and_folders_follow_the_umask(tmp_path):
    """Readable by others under the usual umask (022), as any new file: artifacts are shared."""
    import os

    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "f.json")
        with atomic_dir(tmp_path / "d") as tmp:
            write_json({"b": 2}, tmp / "inner.json")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "inner.json").stat().st_mode & 0o777 == 0o644
