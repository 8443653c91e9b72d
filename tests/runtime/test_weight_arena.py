"""The huge-page weight arena: aligned views that hold exactly what is copied in, and reach TVM without a copy."""
import numpy as np

from ember.runtime.weight_arena import ALIGN, HUGE_PAGE, WeightArena


def test_views_are_aligned_disjoint_and_keep_their_values():
    specs = [((3, 5), "float32"), ((7,), "uint32"), ((2, 9), "float16"), ((0,), "int8"), ((4, 4), "int8")]
    arena = WeightArena(specs)
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 100, size=s).astype(d) for s, d in specs]
    for view, value in zip(arena.views, values):
        assert view.shape == value.shape and view.dtype == value.dtype and view.flags.writeable
        assert view.ctypes.data % ALIGN == 0
        view[...] = value
    for view, value in zip(arena.views, values):  # no view overlaps another
        np.testing.assert_array_equal(view, value)
    assert arena.views[0].ctypes.data % HUGE_PAGE == 0
    assert isinstance(arena.huge_pages, bool)


def test_tvm_tensors_share_the_arena():
    import tvm

    arena = WeightArena([((64,), "float32")])
    arena.views[0][...] = np.arange(64, dtype=np.float32)
    tensor = tvm.runtime.from_dlpack(arena.views[0])
    assert tensor.numpy().tolist() == list(range(64))
    arena.views[0][0] = 42.0  # same memory: TVM sees the write
    assert tensor.numpy()[0] == 42.0


def test_huge_pages_for_runtime_allocations_find_the_new_mapping():
    import mmap

    from ember.runtime import host_pages

    made = []

    def allocate():
        region = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        made.append(region)
        return "cache"

    before = host_pages._anonymous_mappings()
    assert host_pages.with_huge_pages(allocate) == "cache"
    new = host_pages._anonymous_mappings() - before
    base = np.frombuffer(made[0], dtype=np.uint8).ctypes.data
    assert any(start <= base < end for start, end in new)  # the mapping allocate() made is the one advised
