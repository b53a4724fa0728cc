import numpy as np
import pytest
import zarr
from scipy import ndimage

from nisbflow.data import load_skeleton, open_seed
from nisbflow.errors import OutputExistsError
from nisbflow.synth import grow_forest, make_params, render_block, synthesize_layout, synthesize_seed


def test_seed_layout_and_dtypes(synthetic_seed):
    root, summary = synthetic_seed
    seed = open_seed(root)
    assert seed.img.dtype == np.uint8 and seed.img.shape == (64, 64, 32, 1)
    assert seed.seg.dtype == np.uint32 and seed.seg.chunks == (32, 32, 32)
    assert seed.img.metadata.zarr_format == 2
    attrs = dict(seed.img.attrs)
    assert attrs["voxel_size"] == [9.0, 9.0, 20.0] and attrs["axis_order"] == "xyzc" and "command" in attrs
    assert summary.n_neurons >= 5 and summary.n_skeleton_nodes > 20 and summary.path_length_nm > 1000


def test_every_skeleton_node_lies_inside_its_own_neuron(synthetic_seed):
    root, summary = synthetic_seed
    seg = open_seed(root).seg[...]
    graph = load_skeleton(root / "skeleton.pkl")
    assert graph.number_of_nodes() == summary.n_skeleton_nodes
    for _, attrs in graph.nodes(data=True):
        position = attrs["index_position"]
        assert seg[tuple(position)] == attrs["id"]
        np.testing.assert_allclose(attrs["nm_position"], position * np.array([9.0, 9.0, 20.0]))
    for u, v, data in graph.edges(data=True):
        assert graph.nodes[u]["id"] == graph.nodes[v]["id"] and data["edge_length"] > 0


def test_skeleton_edges_stay_inside_one_connected_piece(synthetic_seed):
    """Decoding ground-truth affinities must be able to reach NERL 1: each skeleton edge joins voxels of one
    6-connected component of its neuron."""
    root, _ = synthetic_seed
    seg = open_seed(root).seg[...]
    graph = load_skeleton(root / "skeleton.pkl")
    components = {}
    broken = 0
    for u, v in graph.edges:
        neuron = graph.nodes[u]["id"]
        if neuron not in components:
            components[neuron] = ndimage.label(seg == neuron)[0]
        pieces = components[neuron]
        broken += pieces[tuple(graph.nodes[u]["index_position"])] != pieces[tuple(graph.nodes[v]["index_position"])]
    assert graph.number_of_edges() > 10 and broken == 0


def test_dense_neurites_with_dark_membranes(synthetic_seed):
    root, summary = synthetic_seed
    seed = open_seed(root)
    image, seg = seed.img[..., 0], seed.seg[...]
    background = seg == 0
    assert 0.03 < background.mean() < 0.3  # a thin membrane / extracellular layer, everything else is neuron
    assert image[background].mean() < image[~background].mean() - 30  # membranes measurably darker
    assert summary.background_fraction == pytest.approx(background.mean())
    assert image.std() > 10  # texture and noise, not a flat picture


def test_deterministic_and_independent_of_chunking(tmp_path):
    a = synthesize_seed(tmp_path / "a", (40, 36, 20), seed=3, chunks=(40, 36, 20), progress=False)
    b = synthesize_seed(tmp_path / "b", (40, 36, 20), seed=3, chunks=(16, 13, 7), zarr_format=3, progress=False)
    for name in ("img", "seg"):
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a/data.zarr" / name))[...],
                                      zarr.open_array(str(tmp_path / "b/data.zarr" / name))[...])
    assert a.n_skeleton_nodes == b.n_skeleton_nodes
    other = render_block(grow_forest(make_params((40, 36, 20), seed=4)), make_params((40, 36, 20), seed=4),
                         (0, 0, 0), (40, 36, 20))[1]
    assert not np.array_equal(other, zarr.open_array(str(tmp_path / "a/data.zarr/seg"))[...])


def test_harder_settings(tmp_path):
    shape = (48, 48, 24)
    base = make_params(shape, seed=5)
    forest = grow_forest(base)
    image, seg = render_block(forest, base, (0, 0, 0), shape)
    low = make_params(shape, seed=5, presets=["low_contrast"])
    low_image, low_seg = render_block(grow_forest(low), low, (0, 0, 0), shape)
    np.testing.assert_array_equal(low_seg, seg)  # same neurons, weaker membranes
    contrast = image[seg > 0].mean() - image[seg == 0].mean()
    low_contrast = low_image[low_seg > 0].mean() - low_image[low_seg == 0].mean()
    assert low_contrast < 0.6 * contrast
    thin = make_params(shape, seed=5, presets=["thin"])
    _, thin_seg = render_block(grow_forest(thin), thin, (0, 0, 0), shape)
    assert len(np.unique(thin_seg)) > len(np.unique(seg))  # more, thinner neurites in the same volume
    defects = make_params(shape, seed=5, presets=["slice_defects"], dropped_slice_probability=0.2,
                          shifted_slice_probability=0.2)
    defect_forest = grow_forest(defects)
    defect_image, defect_seg = render_block(defect_forest, defects, (0, 0, 0), shape)
    assert len(defect_forest.dropped_slices) and len(defect_forest.shifted_slices)
    assert (defect_image[:, :, defect_forest.dropped_slices] == 0).all()
    np.testing.assert_array_equal(defect_seg, seg)  # labels are not shifted, only the image
    z = next(z for z, s in zip(defect_forest.shifted_slices, defect_forest.slice_shift) if np.any(s))
    assert not np.array_equal(defect_image[:, :, z], image[:, :, z])
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        make_params(shape, presets=["blurry"])


def test_nisb_layout_and_existing_outputs(tmp_path):
    summaries = synthesize_layout(tmp_path, (24, 24, 12), train_seeds=2, chunks=(24, 24, 12), progress=False)
    folders = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/seed*"))
    assert folders == ["test/seed101", "train/seed0", "train/seed1", "val/seed100"]
    assert len(summaries) == 4 and all((tmp_path / f / "skeleton.pkl").exists() for f in folders)
    before = zarr.open_array(str(tmp_path / "test/seed101/data.zarr/img"))[...]
    with pytest.raises(OutputExistsError, match="--overwrite"):
        synthesize_seed(tmp_path / "test/seed101", (24, 24, 12), seed=9, progress=False)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "test/seed101/data.zarr/img"))[...], before)
    synthesize_seed(tmp_path / "test/seed101", (24, 24, 12), seed=9, overwrite=True, progress=False)
    assert not np.array_equal(zarr.open_array(str(tmp_path / "test/seed101/data.zarr/img"))[...], before)


def test_bad_shapes():
    with pytest.raises(ValueError, match="three positive voxel counts"):
        make_params((0, 4, 4))


def _grid_of(nodes, low, cell, dims):
    """The neighbour-search grid of ``nodes`` (rows x, y, z, radius, neuron), built with the kernel's own insert."""
    from nisbflow.synth import kernel

    cell_head = np.full(int(np.prod(dims)), -1, dtype=np.int64)
    records, following, fill, n = np.empty((4, kernel.BUCKET_NODES, 5)), np.empty(4, np.int64), np.empty(4, np.int64), 0
    for x, y, z, r, neuron in nodes:
        records, following, fill, n = kernel._add_to_grid(np.array([x, y, z]), r, neuron, low, cell, dims, cell_head,
                                                          following, fill, records, n)
    return cell_head, following, fill, records


def test_clearance_equals_a_plain_loop_over_every_node_including_nodes_outside_the_domain():
    """The grid search (buckets, rings, clamped cells) gives the distance a loop over all nodes gives, capped at the
    limit, for points and nodes inside and up to 300 nm outside the domain (a branch's last node may lie outside:
    unclamped cell indices once wrote past the grid); with ``stop_below`` it stops early but keeps the verdict."""
    from nisbflow.synth import kernel

    rng = np.random.default_rng(3)
    low, high, cell, r_max = np.array([0.0, 0.0, 0.0]), np.array([2000.0, 1500.0, 1000.0]), 150.0, 120.0
    dims = ((high - low) // cell).astype(np.int64) + 1
    nodes = np.column_stack([rng.uniform(low - 300, high + 300, size=(600, 3)), rng.uniform(10, r_max, 600),
                             rng.integers(1, 6, 600)])
    grid = _grid_of(nodes, low, cell, dims)
    for _ in range(300):
        p = rng.uniform(low - 300, high + 300)
        own, limit = int(rng.integers(-1, 6)), float(rng.uniform(50, 400))
        expected = limit
        for x, y, z, r, neuron in nodes:  # the rule, plainly: nearest sphere surface of another neuron, capped
            if neuron != own:
                expected = min(expected, float(np.sqrt((p[0] - x) ** 2 + (p[1] - y) ** 2 + (p[2] - z) ** 2) - r))
        assert kernel._clearance(p, own, limit, -np.inf, r_max, low, cell, dims, *grid) == expected
        threshold = float(rng.uniform(-50, 300))
        early = kernel._clearance(p, own, limit, threshold, r_max, low, cell, dims, *grid)
        assert (early < threshold) == (expected < threshold) and early >= expected


def test_rasterised_labels_equal_a_plain_loop_over_every_segment():
    """Two-level pruning (groups of cells, cells) changes nothing: labels, f1 and the capped margin of every voxel of
    a region equal a per-voxel loop over all of the forest's segments, written from the rule in the docstring."""
    from nisbflow.synth import kernel

    params = make_params((48, 40, 24), seed=2)
    forest = kernel.grow_forest(params)
    start, end, radius, neuron = forest.segment_arrays
    origin, shape = np.array([5, 0, 3]), np.array([21, 17, 9])
    voxel = np.asarray(params.voxel_size)
    cap = max(3.0 * params.membrane_width_nm, 40.0)
    labels, nearest, margin = np.zeros(tuple(shape), np.uint32), np.empty(tuple(shape)), np.empty(tuple(shape))
    kernel._rasterise(origin, shape, voxel, np.asarray(kernel.CELL_VOXELS), 0.0, 0.0, start, end, radius, neuron,
                      params.membrane_width_nm, params.max_gap_nm, cap, labels, nearest, margin)
    for x, y, z in np.ndindex(*shape):
        point = (origin + (x, y, z)) * voxel
        axis = end - start
        t = np.clip(((point - start) * axis).sum(1) / np.maximum((axis * axis).sum(1), 1e-300), 0, 1)
        distance = np.linalg.norm(point - (start + t[:, None] * axis), axis=1) - radius
        per_neuron = {}
        for d, n in zip(distance, neuron):
            per_neuron[n] = min(per_neuron.get(n, np.inf), d)
        ranked = sorted(per_neuron.items(), key=lambda item: item[1])
        first, owner = ranked[0][1], ranked[0][0]
        gap = min(ranked[1][1] - first, cap) if len(ranked) > 1 else cap
        assert nearest[x, y, z] == pytest.approx(first, abs=1e-9) and margin[x, y, z] == pytest.approx(gap, abs=1e-9)
        background = first > params.max_gap_nm or gap < params.membrane_width_nm
        assert labels[x, y, z] == (0 if background else owner), (x, y, z)


def test_a_block_rendered_from_its_forest_region_equals_the_whole_forest():
    """Block tasks get only the capsules and organelles near them (``forest_regions``): every block of an uneven
    grid renders the same image and labels from its region as from the whole forest, slice shifts and blur halo
    included, while a region holds a fraction of the forest's capsules."""
    from nisbflow.synth.kernel import forest_regions

    shape = (70, 64, 30)
    params = make_params(shape, seed=6, presets=["slice_defects"])
    forest = grow_forest(params)
    assert np.abs(forest.slice_shift).max() > 0  # shifted slices reach across block borders
    bounds = [[0, 24, 48, 70], [0, 32, 64], [0, 13, 30]]
    regions = forest_regions(forest, params, bounds)
    assert set(regions) == {(i, j, k) for i in range(3) for j in range(2) for k in range(2)}
    n_segments = len(forest.segment_arrays[0])
    for (i, j, k), region in regions.items():
        origin = (bounds[0][i], bounds[1][j], bounds[2][k])
        size = (bounds[0][i + 1] - origin[0], bounds[1][j + 1] - origin[1], bounds[2][k + 1] - origin[2])
        whole = render_block(forest, params, origin, size)
        part = render_block(region, params, origin, size)
        np.testing.assert_array_equal(part[0], whole[0])
        np.testing.assert_array_equal(part[1], whole[1])
        assert len(region.segment_arrays[0]) < n_segments
