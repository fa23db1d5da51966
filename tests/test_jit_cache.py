from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from byzlearn import _jit_cache


def make_package(root: Path) -> Path:
    """A package with two compiled modules (one cached, one not), a plain one, and numba's
    cache files for all three folders."""
    package = root / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "kernel.py").write_text("@njit(cache=True)\ndef f(x):\n    return x\n")
    (package / "sub" / "helper.py").write_text("from numba import njit\nLIMIT = 3\n")
    (package / "plain.py").write_text("NOTHING = 1\n")
    for folder in (package / "__pycache__", package / "sub" / "__pycache__"):
        folder.mkdir()
        for name in ("f-1.py311.nbi", "f-1.py311.1.nbc", "plain.cpython-311.pyc"):
            (folder / name).write_text("cached")
    return package


def cache_files(package: Path) -> list[str]:
    return sorted(p.relative_to(package).as_posix() for p in package.rglob("*.nb[ic]"))


def test_compiled_sources_are_the_modules_with_numba_code(tmp_path):
    package = make_package(tmp_path)
    names = [p.relative_to(package).as_posix() for p in _jit_cache.compiled_sources(package)]
    assert names == ["kernel.py", "sub/helper.py"]


def test_caches_are_dropped_when_a_compiled_module_changes_and_only_then(tmp_path):
    package = make_package(tmp_path)
    # no stamp yet: the caches' origin is unknown, so they go
    assert _jit_cache.drop_stale(package)
    assert cache_files(package) == []
    assert (package / "__pycache__" / "plain.cpython-311.pyc").exists()  # Python's own stay
    stamp = package / "__pycache__" / _jit_cache.STAMP
    assert stamp.read_text() == _jit_cache.sources_digest(
        _jit_cache.compiled_sources(package), package
    )
    # numba caches again; nothing changed: the caches stay
    (package / "__pycache__" / "f-1.py311.nbi").write_text("cached")
    assert not _jit_cache.drop_stale(package)
    assert cache_files(package) == ["__pycache__/f-1.py311.nbi"]
    # a module without numba code changes: the caches stay
    (package / "plain.py").write_text("NOTHING = 2\n")
    assert not _jit_cache.drop_stale(package)
    # a constant of a compiled helper changes (the cached caller inlined the old one): dropped
    (package / "sub" / "__pycache__" / "f-1.py311.1.nbc").write_text("cached")
    (package / "sub" / "helper.py").write_text("from numba import njit\nLIMIT = 4\n")
    assert _jit_cache.drop_stale(package)
    assert cache_files(package) == []
    assert not list(package.rglob(f"{_jit_cache.STAMP}.*"))  # no partial stamp left


def test_a_read_only_tree_is_left_alone(tmp_path):
    package = make_package(tmp_path)
    for folder in (package / "__pycache__", package / "sub" / "__pycache__"):
        folder.chmod(0o555)
    try:
        if os.access(package / "__pycache__", os.W_OK):  # root ignores permissions
            return
        assert not _jit_cache.drop_stale(package)  # no exception
        assert len(cache_files(package)) == 4
    finally:
        for folder in (package / "__pycache__", package / "sub" / "__pycache__"):
            folder.chmod(0o755)


def test_importing_the_package_keeps_a_current_stamp():
    """The package's own import checks its caches (a fresh process: the stamp then matches)."""
    code = "import byzlearn, byzlearn._jit_cache as j; print(j.drop_stale())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_a_damaged_stamp_drops_the_caches_and_is_rewritten(tmp_path):
    """A stamp that is not text raised UnicodeDecodeError out of ``import byzlearn``."""
    package = make_package(tmp_path)
    stamp = package / "__pycache__" / _jit_cache.STAMP
    stamp.write_bytes(b"\xff\xfe\x00 not a digest")
    assert _jit_cache.drop_stale(package)
    assert cache_files(package) == []
    assert not _jit_cache.drop_stale(package)  # the stamp now holds the digest


def test_a_py_name_that_is_not_a_module_does_not_stop_the_check(tmp_path):
    """A dangling link or a folder named ``*.py`` raised OSError in ``compiled_sources``, which
    turned the whole check off: stale caches stayed, to be loaded."""
    package = make_package(tmp_path)
    (package / "dangling.py").symlink_to(package / "gone.py")
    (package / "folder.py").mkdir()
    assert _jit_cache.drop_stale(package)
    assert cache_files(package) == []
    (package / "__pycache__" / "f-1.py311.nbi").write_text("cached")
    (package / "kernel.py").write_text("@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    assert _jit_cache.drop_stale(package)
    assert cache_files(package) == []


# ---------------------------------------------------------------- saves across processes
def _save_both_at_once(folder: Path, monkeypatch) -> None:
    """Two saves of one function's cache (two signatures) that both read its index before
    either writes (threads meeting at a barrier after the read: each opens the lock file on its
    own, so a flock excludes the other as another process's would)."""
    import threading

    from numba.core import caching

    barrier = threading.Barrier(2, timeout=1.0)
    read_index = caching.IndexDataCacheFile._load_index

    def read_then_meet(self):
        index = read_index(self)
        # with the lock the other save waits for this one: they do not meet
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return index

    monkeypatch.setattr(caching.IndexDataCacheFile, "_load_index", read_then_meet)
    saves = [
        threading.Thread(target=_cache_file(folder).save, args=(key, value))
        for key, value in (("float32", b"code for float32"), ("float64", b"code for float64"))
    ]
    for thread in saves:
        thread.start()
    for thread in saves:
        thread.join()
    monkeypatch.undo()


def _cache_file(folder: Path):
    from numba.core import caching

    return caching.IndexDataCacheFile(
        cache_path=str(folder), filename_base="kernel-12.py311", source_stamp=(1.0, 100)
    )


def test_two_saves_of_one_function_at_once_keep_each_signatures_code(tmp_path, monkeypatch):
    assert _jit_cache.serialise_saves()  # (installed by importing the aggregators too)
    _save_both_at_once(tmp_path, monkeypatch)
    cache = _cache_file(tmp_path)
    assert cache.load("float32") == b"code for float32"
    assert cache.load("float64") == b"code for float64"
    assert (tmp_path / _jit_cache.SAVE_LOCK).is_file()
    assert sorted(p.name for p in tmp_path.glob("*.nbc")) == [
        "kernel-12.py311.1.nbc",
        "kernel-12.py311.2.nbc",
    ]


def test_without_the_lock_the_race_maps_a_signature_to_the_others_code(tmp_path, monkeypatch):
    """What the lock prevents (numba's own save, unlocked): the test above can fail."""
    from numba.core import caching

    assert _jit_cache.serialise_saves()
    unlocked = caching.IndexDataCacheFile.save.__wrapped__
    with monkeypatch.context() as patched:
        patched.setattr(caching.IndexDataCacheFile, "save", unlocked)
        _save_both_at_once(tmp_path, monkeypatch)
    cache = _cache_file(tmp_path)
    found = {key: cache.load(key) for key in ("float32", "float64")}
    assert [p.name for p in tmp_path.glob("*.nbc")] == ["kernel-12.py311.1.nbc"]
    assert None in found.values() or found["float32"] == found["float64"]


def test_a_cache_folder_without_a_lock_file_saves_as_before(tmp_path, monkeypatch):
    assert _jit_cache.serialise_saves()
    folder = tmp_path / "cache"
    folder.mkdir()
    real_open = os.open

    def no_lock_file(path, *args, **kwargs):
        if str(path).endswith(_jit_cache.SAVE_LOCK):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_lock_file)
    _cache_file(folder).save("float32", b"code")
    monkeypatch.undo()
    assert _cache_file(folder).load("float32") == b"code"
    assert not (folder / _jit_cache.SAVE_LOCK).exists()
