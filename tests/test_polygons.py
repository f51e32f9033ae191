"""Label maps to CVAT polygons: exact tiling, pixel-edge coordinates, holes, small islands."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import shapely
from rasterio.enums import MergeAlg
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from sam2oct.geometry import merge as merge_module
from sam2oct.geometry import runs as runs_module
from sam2oct.geometry import trace as trace_module
from sam2oct.geometry.polygons import flatten_points, label_map_to_shapes, mask_outline, rasterize_shapes

DATA = Path(__file__).parent / "data" / "synthetic"
NAMES = ["background", "a", "b", "c", "d", "e"]


def polygons(shapes):
    return [shapely.Polygon(shape["points"]) for shape in shapes]


def rasterize(shapes, names, size):
    """Label map drawn back from the shapes with CVAT's pixel convention (pixel centre inside)."""
    pairs = [(polygon, names.index(shape["label"])) for polygon, shape in zip(polygons(shapes), shapes)]
    if not pairs:
        return np.zeros(size, np.uint8)
    return rasterio.features.rasterize(pairs, out_shape=size, fill=0, dtype="uint8")


def overlap_area(polys):
    if len(polys) < 2:
        return 0.0
    tree = shapely.STRtree(polys)
    first, second = tree.query(polys, predicate="intersects")
    pairs = first < second
    return shapely.area(shapely.intersection(np.take(polys, first[pairs]), np.take(polys, second[pairs]))).sum()


def check_tiles_image(label_map, tolerance, min_area=0):
    """Background included (classes shifted up by one): the shapes must tile the image rectangle."""
    height, width = label_map.shape
    names = [f"class {k}" for k in range(label_map.max() + 2)]
    shapes = label_map_to_shapes(label_map.astype(np.int64) + 1, names, tolerance=tolerance, min_area=min_area)
    polys = polygons(shapes)
    rectangle = shapely.box(0, 0, width, height)
    assert shapely.union_all(polys).symmetric_difference(rectangle).area < 1e-9
    assert overlap_area(polys) < 1e-9
    assert abs(sum(p.area for p in polys) - width * height) < 1e-9
    return shapes


def check_format(shapes, size):
    height, width = size
    json.dumps(shapes)
    for shape in shapes:
        assert shape["type"] == "polygon"
        points = shape["points"]
        assert all(type(v) is float for point in points for v in point)
        assert len({tuple(p) for p in points}) == len(points) >= 3  # distinct, closing point not repeated
        xy = np.array(points)
        assert (xy >= 0).all() and (xy[:, 0] <= width).all() and (xy[:, 1] <= height).all()
        polygon = shapely.Polygon(points)
        assert polygon.is_valid, shapely.is_valid_reason(polygon)
        x, y = xy.T
        assert np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) > 0  # same orientation for all


def check_no_foreign_pixels(label_map, shapes, names):
    """Every shape covers only pixels of its own class (a dropped hole would cover another's)."""
    for shape in shapes:
        drawn = rasterize([shape], names, label_map.shape) != 0
        assert drawn.any()
        assert (label_map[drawn] == names.index(shape["label"])).all()


# Layer "a" with three holes (2x2, 1x1, 1x1), a ring "d" around one pixel,
# diagonal contacts and regions on the image border.
HOLEY = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 2, 2, 1, 1, 1, 1, 3, 1, 1, 1, 1],
    [1, 2, 2, 1, 4, 4, 4, 1, 1, 5, 1, 1],
    [1, 1, 1, 1, 4, 2, 4, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 4, 4, 4, 1, 1, 1, 1, 0],
    [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0],
    [0, 3, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
])


def test_exact_tiling_and_rasterizes_back():
    shapes = label_map_to_shapes(HOLEY, NAMES, tolerance=0, min_area=0)
    assert (rasterize(shapes, NAMES, HOLEY.shape) == HOLEY).all()
    assert overlap_area(polygons(shapes)) == 0
    covered = shapely.union_all(polygons(shapes))
    assert covered.area == np.count_nonzero(HOLEY)
    check_format(shapes, HOLEY.shape)
    check_tiles_image(HOLEY, tolerance=0)


def test_pixel_edge_coordinates():
    label_map = np.zeros((4, 5), int)
    label_map[1:3, 2:5] = 2
    (shape,) = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=0)
    assert shape["label"] == "b"
    # pixels x 2..4, y 1..2 cover [2, 5] x [1, 3]; counter-clockwise in x/y
    # (clockwise on screen), from whichever vertex the ring starts at
    points = shape["points"]
    start = points.index(min(points))
    assert points[start:] + points[:start] == [[2.0, 1.0], [5.0, 1.0], [5.0, 3.0], [2.0, 3.0]]


def test_holes_are_cut_into_hole_free_pieces():
    shapes = label_map_to_shapes(HOLEY, NAMES, tolerance=0, min_area=0)
    check_no_foreign_pixels(HOLEY, shapes, NAMES)
    counts = Counter(shape["label"] for shape in shapes)
    # "a" has three holes in disjoint column ranges: three cuts, four pieces;
    # "d" (a ring around a "b" pixel) has one hole: two pieces
    assert counts == {"a": 4, "b": 2, "c": 2, "d": 2, "e": 1}
    pieces = [p for p, s in zip(polygons(shapes), shapes) if s["label"] == "a"]
    assert shapely.union_all(pieces).area == np.count_nonzero(HOLEY == 1)


def test_simplified_coverage_keeps_tiling_and_border():
    rng = np.random.default_rng(3)
    label_map = layered(rng, 60, 80, 5)
    for tolerance in (0.5, 1.0, 3.0):
        shapes = check_tiles_image(label_map, tolerance)
        check_format(shapes, label_map.shape)
    # simplification actually removed vertices
    exact = sum(len(s["points"]) for s in label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=25))
    simple = sum(len(s["points"]) for s in label_map_to_shapes(label_map, NAMES, tolerance=3, min_area=25))
    assert simple < exact / 2


def test_neighbours_share_vertices_after_simplification():
    rng = np.random.default_rng(5)
    label_map = layered(rng, 40, 60, 4)
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=2, min_area=25)
    polys = polygons(shapes)
    for i, j in zip(*shapely.STRtree(polys).query(polys, predicate="touches")):
        shared = polys[i].boundary.intersection(polys[j].boundary)
        if shared.length:
            # every vertex of one polygon on the shared boundary is a vertex of the other
            on_edge = {tuple(p) for p in shapes[i]["points"] if shared.distance(shapely.Point(p)) < 1e-12}
            assert on_edge <= {tuple(p) for p in shapes[j]["points"]}


def test_background_and_empty_maps():
    assert label_map_to_shapes(np.zeros((5, 7), np.uint8), NAMES, tolerance=1.0, min_area=25) == []
    (shape,) = label_map_to_shapes(np.full((5, 7), 3), NAMES, tolerance=1.0, min_area=25)
    assert shape["label"] == "c" and sorted(map(tuple, shape["points"])) == [(0, 0), (0, 5), (7, 0), (7, 5)]


def test_small_island_joins_surrounding_layer():
    label_map = np.zeros((12, 12), int)
    label_map[3:9] = 1
    label_map[5:7, 5:7] = 2  # 4-pixel island inside layer "a"
    label_map[0, 0] = 3  # one-pixel speck of "c" in the background
    label_map[4, 9] = 0  # a background hole in the layer
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=5)
    assert [s["label"] for s in shapes] == ["a"]
    assert shapely.Polygon(shapes[0]["points"]).equals(shapely.box(0, 3, 12, 9))
    # with min_area=1 nothing is merged: "a" then has two holes, so three pieces
    kept = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=1)
    assert Counter(s["label"] for s in kept) == {"a": 3, "b": 1, "c": 1}


def test_small_fragment_joins_the_class_with_longest_border():
    label_map = np.zeros((10, 12), int)
    label_map[2:5] = 1
    label_map[5:8] = 2
    # a 1x4 "c" fragment lying in "b", touching "a" along its 4-pixel top edge
    label_map[5, 3:7] = 3
    # a 2x2 "c" fragment inside "a", touching "b" with its 2-pixel bottom edge
    label_map[3:5, 8:10] = 3
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=5)
    drawn = rasterize(shapes, NAMES, label_map.shape)
    assert (drawn[5, 3:7] == 2).all()  # border with "b": 1 + 4 + 1 = 6, with "a": 4
    assert (drawn[3:5, 8:10] == 1).all()  # border with "a": 6, with "b": 2
    assert Counter(s["label"] for s in shapes) == {"a": 1, "b": 1}


def test_chain_of_small_regions_is_merged_without_gaps():
    # nested rings of 16 ("b"), 8 ("c") and 1 ("d") pixels: merged from the
    # inside out, they become one 25-pixel "b" block, which then stays
    label_map = np.ones((9, 9), int)
    label_map[2:7, 2:7] = 2
    label_map[3:6, 3:6] = 3
    label_map[4, 4] = 4
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=20)
    expected = np.ones((9, 9), int)
    expected[2:7, 2:7] = 2
    assert (rasterize(shapes, NAMES, label_map.shape) == expected).all()


def test_longest_border_wins_over_largest_neighbour():
    # a 3-pixel "c" fragment in the thin layer "a": border with "a" 3 + 1 + 1,
    # with the much larger "b" below only 3.  (GDAL's sieve would pick "b",
    # the neighbour with the largest area.)
    label_map = np.array([
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 3, 3, 3, 1, 1, 1, 1, 1, 1],
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
    ])
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=5)
    expected = np.array([[1] * 10] * 2 + [[2] * 10] * 4)
    assert (rasterize(shapes, NAMES, label_map.shape) == expected).all()


def test_equal_borders_go_to_the_lowest_class():
    # the "c" pixel borders "a" (up, left) and "b" (right, down) along 2 edges each
    label_map = np.array([
        [1, 1, 1, 1],
        [1, 3, 2, 2],
        [2, 2, 2, 2],
        [2, 2, 2, 2],
    ])
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=2)
    expected = np.array([
        [1, 1, 1, 1],
        [1, 1, 2, 2],
        [2, 2, 2, 2],
        [2, 2, 2, 2],
    ])
    assert (rasterize(shapes, NAMES, label_map.shape) == expected).all()


def test_smaller_of_two_touching_small_regions_moves_first():
    # "d" (1 pixel) and "c" (2 pixels) touch, so only the smaller "d" moves in
    # the first round: its borders are "a" 2 (left, down), "b" 1, "c" 1 -> "a".
    # In the second round "c" borders "b" along 3 edges and "a" -- now
    # including the former "d" -- along 3 as well: the tie goes to "a".  Had
    # both moved at once, "c" would have counted "b" 3, "a" 2, "d" 1 -> "b".
    label_map = np.array([
        [2, 2, 2, 2, 2],
        [2, 2, 3, 2, 2],
        [1, 4, 3, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ])
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=3)
    expected = np.array([
        [2, 2, 2, 2, 2],
        [2, 2, 1, 2, 2],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ])
    assert (rasterize(shapes, NAMES, label_map.shape) == expected).all()


def test_hole_touching_the_outline_at_a_corner_is_cut():
    # "a" encloses the "b" pixel, which touches the "c" pixel at one corner:
    # "a" is one region whose hole touches its outline at a point.  Returning
    # its outline alone would paint over "b"; cut at x=1, "a" falls into its
    # left column, its top-right block and the single pixel below "b".
    label_map = np.array([
        [1, 1, 1],
        [1, 2, 1],
        [1, 1, 3],
    ])
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=0)
    assert (rasterize(shapes, NAMES, label_map.shape) == label_map).all()
    check_no_foreign_pixels(label_map, shapes, NAMES)
    check_format(shapes, label_map.shape)
    assert Counter(s["label"] for s in shapes) == {"a": 3, "b": 1, "c": 1}


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_more_than_256_classes(dtype):
    names = [f"class {k}" for k in range(301)]
    label_map = np.zeros((6, 8), dtype)
    label_map[2:4] = 300
    label_map[4:] = 256
    label_map[3, 3] = 299  # one pixel: merged into the layer around it
    shapes = label_map_to_shapes(label_map, names, tolerance=0, min_area=2)
    assert [s["label"] for s in shapes] == ["class 256", "class 300"]
    assert shapely.Polygon(shapes[0]["points"]).equals(shapely.box(0, 4, 8, 6))
    assert shapely.Polygon(shapes[1]["points"]).equals(shapely.box(0, 2, 8, 4))


def test_noise_is_merged_in_rounds():
    rng = np.random.default_rng(0)
    label_map = rng.integers(0, 4, (64, 64))
    sizes = region_sizes(label_map)
    assert (1 / sizes[sizes < 10]).sum() > 1000  # pure noise: over a thousand small regions
    drawn = rasterize(label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=10), NAMES, label_map.shape)
    assert region_sizes(drawn).min() >= 10
    assert (drawn[sizes >= 10] == label_map[sizes >= 10]).all()
    check_tiles_image(label_map, tolerance=1.0, min_area=10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        label_map_to_shapes(np.zeros((2, 2, 2), int), NAMES, tolerance=1.0, min_area=25)
    with pytest.raises(ValueError, match="integer"):
        label_map_to_shapes(np.zeros((2, 2)), NAMES, tolerance=1.0, min_area=25)
    with pytest.raises(ValueError, match="outside 0..5"):
        label_map_to_shapes(np.full((2, 2), 6), NAMES, tolerance=1.0, min_area=25)
    with pytest.raises(ValueError, match=">= 0"):
        label_map_to_shapes(np.zeros((2, 2), int), NAMES, tolerance=-1, min_area=25)


def test_mask_outline():
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    mask[3, 4] = False  # a hole: ignored by an outline
    mask[7, 0] = True  # smaller region: not the largest
    points = mask_outline(mask)
    assert all(type(v) is float for p in points for v in p)
    assert sorted(map(tuple, points)) == [(3, 2), (3, 5), (7, 2), (7, 5)]
    check_format([{"type": "polygon", "points": points}], mask.shape)
    assert mask_outline(np.zeros((3, 3), np.uint8)) == []
    assert sorted(map(tuple, mask_outline(np.ones((1, 1), np.uint8)))) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_rasterize_shapes_partitions_pixels():
    rng = np.random.default_rng(7)
    label_map = layered(rng, 50, 70, 5, speckle=0.1)
    exact = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=0)
    owner = rasterize_shapes(exact, label_map.shape)
    lookup = np.array([0] + [NAMES.index(s["label"]) for s in exact])
    assert (lookup[owner] == label_map).all()
    # simplified, background included: every pixel centre in exactly one shape
    names = [f"class {k}" for k in range(6)]
    simplified = label_map_to_shapes(label_map + 1, names, tolerance=2, min_area=4)
    burns = rasterio.features.rasterize(((p, 1) for p in polygons(simplified)), out_shape=label_map.shape,
                                        merge_alg=MergeAlg.add, dtype="int32")
    assert (burns == 1).all()
    assert (rasterize_shapes(simplified, label_map.shape) > 0).all()
    assert not rasterize_shapes([], (3, 4)).any()


def test_flatten_points():
    assert flatten_points([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


# Per-class polygon counts of the sample label maps, read off the images by
# hand: layers that thin to nothing in the foveal pit are two regions in the
# data (left and right of the pit).  Fragments of 5-10 pixels (OPL) are merged
# away by the default min_area; in s1 that also rejoins the two INL halves
# which a 5-pixel OPL fragment separated.
SPLIT_IN_DATA = {
    "bscan_768x496_s1_labels.png": {"OPL": 2},
    "bscan_750x500_s2_labels.png": {"NFL": 2, "INL": 2},  # NFL halves meet only diagonally
    "bscan_992x1024_s3_labels.png": {"OPL": 2},
    "bscan_512x885_s4_labels.png": {"OPL": 2},
}


@pytest.mark.parametrize("name", SPLIT_IN_DATA)
def test_sample_label_maps(name):
    classes = json.loads((DATA / "classes.json").read_text())["classes"]
    label_map = np.array(Image.open(DATA / name))
    shapes = label_map_to_shapes(label_map, classes, tolerance=1.0, min_area=25)
    expected = {cls: 1 for cls in classes[1:]} | SPLIT_IN_DATA[name]
    assert Counter(s["label"] for s in shapes) == expected
    check_format(shapes, label_map.shape)
    # editable: a few hundred vertices per layer at most, not one per boundary pixel
    assert max(len(s["points"]) for s in shapes) < 400
    check_tiles_image(label_map, tolerance=1.0, min_area=25)


# --- property tests -------------------------------------------------------


def layered(rng, height, width, n_classes, speckle=0.05):
    """Layers with ragged boundaries from top to bottom, plus random speckle."""
    levels = rng.integers(0, height + 1, (n_classes - 1, 1))
    edges = np.sort(levels + rng.integers(-2, 3, (n_classes - 1, width)), axis=0)
    label_map = (np.arange(height)[None, :, None] >= edges[:, None, :]).sum(axis=0)
    speck = rng.random((height, width)) < speckle
    label_map[speck] = rng.integers(0, n_classes, speck.sum())
    return label_map


@st.composite
def label_maps(draw):
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    n_classes = draw(st.integers(2, 5))
    if draw(st.booleans()):
        return draw(arrays(np.uint8, (height, width), elements=st.integers(0, n_classes - 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return layered(rng, height, width, n_classes, speckle=draw(st.sampled_from([0, 0.03, 0.2])))


@settings(max_examples=120, deadline=None)
@given(label_maps())
def test_random_maps_exact(label_map):
    shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=0)
    assert (rasterize(shapes, NAMES, label_map.shape) == label_map).all()
    check_format(shapes, label_map.shape)
    check_no_foreign_pixels(label_map, shapes, NAMES)
    check_tiles_image(label_map, tolerance=0)


@settings(max_examples=120, deadline=None)
@given(label_maps())
def test_regions_match_gdal_polygonize(label_map):
    """The traced regions, holes included, are the polygons GDAL's polygonize gives (an independent tracer)."""
    runs = runs_module.Runs.of_raster(label_map)
    upper, lower = runs.vertical_pairs
    region = runs_module.components(runs, upper, lower, runs.key)
    ours = trace_module.trace(runs, region)
    assert shapely.is_valid(ours).all()
    values = runs_module.region_values(runs, region)
    gdal = [(int(v), shapely.geometry.shape(g))
            for g, v in rasterio.features.shapes(label_map.astype(np.int32), connectivity=4)]

    def summary(pairs):  # GDAL leaves out vertices on straight edges, so compare shapes, not rings
        return sorted((c, p.area, p.bounds, len(p.interiors), round(p.length, 9)) for c, p in pairs)

    assert summary(zip(values.tolist(), ours)) == summary(gdal)
    # holes counted from the runs alone (which regions get cut) agree with the traced rings
    holes = runs_module.hole_counts(runs, region)
    assert holes.tolist() == shapely.get_num_interior_rings(ours).tolist()
    for value in np.unique(label_map):
        mine = shapely.union_all(ours[values == value])
        theirs = shapely.union_all([p for c, p in gdal if c == value])
        assert mine.symmetric_difference(theirs).area == 0


# all movers of a round at once, or one per round (the cap that bounds memory on maps with many classes)
merge_paths = st.sampled_from([merge_module.MERGE_TABLE_LIMIT, 1])


@settings(max_examples=120, deadline=None)
@given(label_maps(), st.sampled_from([0.5, 1.0, 2.0, 5.0]), st.sampled_from([0, 3, 8]), merge_paths)
def test_random_maps_simplified(label_map, tolerance, min_area, merge_limit):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(merge_module, "MERGE_TABLE_LIMIT", merge_limit)
        shapes = check_tiles_image(label_map, tolerance, min_area)
        with_background = label_map_to_shapes(label_map, NAMES, tolerance=tolerance, min_area=min_area)
    check_format(shapes, label_map.shape)
    check_format(with_background, label_map.shape)
    assert overlap_area(polygons(with_background)) < 1e-9


@settings(max_examples=80, deadline=None)
@given(label_maps(), st.integers(2, 10), merge_paths)
def test_random_maps_merge_only_small_regions(label_map, min_area, merge_limit):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(merge_module, "MERGE_TABLE_LIMIT", merge_limit)
        shapes = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=min_area)
        check_tiles_image(label_map, tolerance=0, min_area=min_area)
    drawn = rasterize(shapes, NAMES, label_map.shape)
    # regions at or above min_area keep their pixels; only smaller ones change
    sizes = region_sizes(label_map)
    assert (drawn[sizes >= min_area] == label_map[sizes >= min_area]).all()
    # and the small ones are gone, unless the whole image is one small region
    after = region_sizes(drawn)
    assert after.min() >= min_area or after.max() == drawn.size


@settings(max_examples=150, deadline=None)
@given(label_maps(), st.integers(2, 10))
def test_single_pixels_first_is_only_a_shortcut(label_map, min_area):
    """Moving one-pixel regions on the runs first gives the same map as the rounds alone."""
    with_shortcut = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=min_area)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(merge_module, "SPECKS_FIRST", False)
        without = label_map_to_shapes(label_map, NAMES, tolerance=0, min_area=min_area)
    assert (rasterize(with_shortcut, NAMES, label_map.shape) == rasterize(without, NAMES, label_map.shape)).all()


def region_sizes(label_map):
    """Size of each pixel's 4-connected region (plain flood fill, independent of the code under test)."""
    height, width = label_map.shape
    sizes = np.zeros(label_map.shape, int)
    for start in np.ndindex(height, width):
        if sizes[start]:
            continue
        stack, seen = [start], {start}
        while stack:
            y, x = stack.pop()
            for near in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                inside = 0 <= near[0] < height and 0 <= near[1] < width
                if inside and near not in seen and label_map[near] == label_map[start]:
                    seen.add(near)
                    stack.append(near)
        for pixel in seen:
            sizes[pixel] = len(seen)
    return sizes
