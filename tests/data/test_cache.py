import os
import pickle

import numpy as np
import pytest
import torch
from lits_files import tiny_case, write_lits_case, write_lits_set, write_nifti_file

from ger_kernels.data import lits, open_dataset, phantom
from ger_kernels.data.cache import DiskSlices, file_fingerprint


def items(dataset):
    return [(image, mask) for image, mask in dataset]


def assert_same(a, b):
    assert a.volume_ids == b.volume_ids and a.slice_indices == b.slice_indices and a.spacing == b.spacing
    assert a.describe() == b.describe()  # counts what tumor_only left out, from the cache's source_slices
    for (image_a, mask_a), (image_b, mask_b) in zip(items(a), items(b)):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


def slice_of(datasets, volume_id, z):
    """The image of slice ``z`` of ``volume_id``, from whichever of ``datasets`` holds it."""
    for dataset in datasets:
        for i, key in enumerate(zip(dataset.volume_ids, dataset.slice_indices)):
            if key == (volume_id, z):
                return dataset[i][0]
    raise KeyError((volume_id, z))


@pytest.fixture
def count_reads(monkeypatch):
    """Counts the volume files read through ``lits``; ``fail=True`` makes any read an error."""
    reads = []

    def install(fail=False):
        def read_volume(path):
            if fail:
                raise AssertionError(f"{path} was read again")
            reads.append(path)
            return original(path)

        original = lits.read_volume
        monkeypatch.setattr(lits, "read_volume", read_volume)
        return reads

    return install


def test_a_second_open_reads_the_cache_not_the_files(tmp_path, count_reads, monkeypatch):
    write_lits_set(tmp_path / "lits", 4)
    source, cache = f"lits:{tmp_path / 'lits'}", str(tmp_path / "cache")
    first = open_dataset(source, 24, cache_dir=cache)
    count_reads(fail=True)
    monkeypatch.setattr(lits, "read_labels", lambda path: pytest.fail(f"{path} was read again"))
    second = open_dataset(source, 24, cache_dir=cache)
    for a, b in zip(first, second):
        assert_same(a, b)
    with pytest.raises(AssertionError, match="read again"):
        open_dataset(source, 24)  # without the cache the files are read


def test_cached_slices_equal_the_in_memory_ones(tmp_path):
    write_lits_set(tmp_path / "lits", 3)
    source = f"lits:{tmp_path / 'lits'}"
    for cached, in_memory in zip(open_dataset(source, 20, cache_dir=str(tmp_path / "cache")),
                                 open_dataset(source, 20)):
        assert_same(cached, in_memory)


def test_a_changed_file_invalidates_its_entry(tmp_path, count_reads):
    paths = write_lits_set(tmp_path / "lits", 3)
    source, cache = f"lits:{tmp_path / 'lits'}", str(tmp_path / "cache")
    before = open_dataset(source, 16, tumor_only=False, cache_dir=cache)
    hu, labels = tiny_case(seed=99)
    write_lits_case(tmp_path / "lits", 0, hu, labels)
    stat = os.stat(paths[0][0])
    os.utime(paths[0][0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    reads = count_reads()
    after = open_dataset(source, 16, tumor_only=False, cache_dir=cache)
    assert reads == [paths[0][0]]
    new_image = slice_of(after, "volume-0", 0)
    np.testing.assert_allclose(new_image[1].numpy(), np.clip((hu[0] + 200) / 450, 0, 1), atol=2.5e-4)
    assert not torch.equal(new_image, slice_of(before, "volume-0", 0))


def test_other_preprocessing_gets_its_own_entries(tmp_path, count_reads):
    write_lits_set(tmp_path / "lits", 2)
    source, cache = f"lits:{tmp_path / 'lits'}", str(tmp_path / "cache")
    open_dataset(source, 16, cache_dir=cache)
    reads = count_reads()
    for options in ({"size": 20}, {"window": (-100, 200)}, {"label_map": {0: 0, 1: 1, 2: 1}}, {"tumor_only": False}):
        open_dataset(source, **{"size": 16, **options}, cache_dir=cache)
    assert len(reads) == 8
    assert len([f for f in os.listdir(cache) if f.endswith(".json")]) == 10


def test_entries_are_float16_and_uint8_files_without_temporaries(tmp_path):
    write_lits_set(tmp_path / "lits", 2)
    cache = tmp_path / "cache"
    train, _ = open_dataset(f"lits:{tmp_path / 'lits'}", 16, cache_dir=str(cache))
    names = sorted(os.listdir(cache))
    assert len(names) == 6 and all(n.startswith("volume-") for n in names)
    assert sorted({n.split(".", 1)[1] for n in names}) == ["images.npy", "json", "masks.npy"]
    images = np.load(cache / next(n for n in names if n.endswith("images.npy")), mmap_mode="r")
    masks = np.load(cache / next(n for n in names if n.endswith("masks.npy")), mmap_mode="r")
    assert images.dtype == np.float16 and images.shape == (2, 3, 16, 16)
    assert masks.dtype == np.uint8 and masks.shape == (2, 16, 16)


def test_cached_datasets_pickle_as_paths(tmp_path):
    write_lits_set(tmp_path / "lits", 2, depth=40, tumor_slices=range(40))
    train, _ = open_dataset(f"lits:{tmp_path / 'lits'}", 64, cache_dir=str(tmp_path / "cache"))
    assert isinstance(train._volumes[0], DiskSlices)
    train[0]  # opens the memory maps
    payload = pickle.dumps(train)
    assert len(payload) < 10_000 < train[0][0].numel() * len(train)
    assert_same(pickle.loads(payload), train)


def test_a_volume_without_tumor_is_cached_as_empty(tmp_path, count_reads):
    write_lits_set(tmp_path / "lits", 2)
    write_lits_case(tmp_path / "lits", 2, *tiny_case(seed=2, tumor_slices=()))
    source, cache = f"lits:{tmp_path / 'lits'}", str(tmp_path / "cache")
    first = open_dataset(source, 16, cache_dir=cache)
    reads = count_reads()
    second = open_dataset(source, 16, cache_dir=cache)
    assert reads == []
    assert "volume-2" not in first[0].volume_ids + first[1].volume_ids
    for a, b in zip(first, second):
        assert_same(a, b)


def test_an_incomplete_entry_is_rebuilt(tmp_path, count_reads):
    paths = write_lits_set(tmp_path / "lits", 2)
    source, cache = f"lits:{tmp_path / 'lits'}", tmp_path / "cache"
    open_dataset(source, 16, cache_dir=str(cache))
    os.remove(cache / next(n for n in os.listdir(cache) if n.startswith("volume-1-") and n.endswith(".masks.npy")))
    reads = count_reads()
    open_dataset(source, 16, cache_dir=str(cache))
    assert reads == [paths[1][0]]


def test_phantom_volumes_are_cached_too(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = open_dataset("phantom:3", 16, cache_dir=cache)
    monkeypatch.setattr(phantom, "make_phantom_volume", lambda *args: pytest.fail("generated again"))
    for a, b in zip(first, open_dataset("phantom:3", 16, cache_dir=cache)):
        assert_same(a, b)


def test_a_same_size_copy_keeping_the_mtime_invalidates_its_entry(tmp_path, count_reads):
    paths = write_lits_set(tmp_path / "lits", 2, extension=".nii")
    source, cache = f"lits:{tmp_path / 'lits'}", str(tmp_path / "cache")
    open_dataset(source, 16, tumor_only=False, cache_dir=cache)
    volume, stat = paths[0][0], os.stat(paths[0][0])
    hu, _ = tiny_case(seed=99)
    write_nifti_file(tmp_path / "lits" / "copy.nii", hu)  # as rsync -a or cp -p replace it: same size and mtime
    os.replace(tmp_path / "lits" / "copy.nii", volume)
    os.utime(volume, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(volume).st_size, os.stat(volume).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    reads = count_reads()
    after = open_dataset(source, 16, tumor_only=False, cache_dir=cache)
    assert reads == [volume]
    np.testing.assert_allclose(slice_of(after, "volume-0", 0)[1].numpy(), np.clip((hu[0] + 200) / 450, 0, 1),
                               atol=2.5e-4)


@pytest.mark.parametrize("suffix, damage", [
    (".json", lambda path: path.write_bytes(b"")),
    (".json", lambda path: path.write_text('{"spacing": null}')),
    (".images.npy", lambda path: path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])),
    (".masks.npy", lambda path: path.write_bytes(b"")),
    (".masks.npy", lambda path: np.save(path, np.zeros((9, 16, 16), np.uint8))),
], ids=["empty-json", "json-without-keys", "truncated-images", "empty-masks", "masks-of-9-slices"])
def test_a_damaged_entry_is_rebuilt_with_a_warning_naming_it(tmp_path, count_reads, caplog, suffix, damage):
    paths = write_lits_set(tmp_path / "lits", 2)
    source, cache = f"lits:{tmp_path / 'lits'}", tmp_path / "cache"
    open_dataset(source, 16, cache_dir=str(cache))
    name = next(n for n in os.listdir(cache) if n.startswith("volume-1-") and n.endswith(suffix))
    damage(cache / name)
    reads = count_reads()
    with caplog.at_level("WARNING", logger="ger_kernels.data.cache"):
        rebuilt = open_dataset(source, 16, cache_dir=str(cache))
    assert reads == [paths[1][0]]
    assert f"cache entry {cache / name.removesuffix(suffix)} is damaged" in caplog.text
    for a, b in zip(rebuilt, open_dataset(source, 16)):
        assert_same(a, b)


@pytest.mark.parametrize("size", [0, 100, 4096, 70_000, 1_000_003])
def test_a_fingerprint_is_of_the_content_not_the_name(tmp_path, size):
    """Copies have one fingerprint; files of one size that differ in a sampled block (a middle one here: two CT
    volumes differ in all of them) do not, nor do files of other sizes; small files are read whole."""
    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "copy").write_bytes(data)
    assert file_fingerprint(str(tmp_path / "a")) == file_fingerprint(str(tmp_path / "copy"))
    (tmp_path / "longer").write_bytes(data + b"\0")
    assert file_fingerprint(str(tmp_path / "a")) != file_fingerprint(str(tmp_path / "longer"))
    if size:
        changed = bytearray(data)
        changed[max(size - 4096, 0) * 8 // 15 + min(10, size - 1)] ^= 1  # in the 9th of 16 blocks, or a small file
        (tmp_path / "b").write_bytes(bytes(changed))
        assert file_fingerprint(str(tmp_path / "a")) != file_fingerprint(str(tmp_path / "b"))
