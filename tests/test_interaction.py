"""sam2oct.geometry.interaction.select on small hand-made label maps; every expected mask is written out.

Clicks are (x, y) in pixel-edge coordinates: pixel (row r, col c) covers [c, c+1) x [r, r+1).
"""

import numpy as np

from sam2oct.geometry.interaction import select

# 6 rows x 7 cols. Class 1 has two regions (top-left block, bottom-right pair) and
# class 2 two regions that touch only diagonally (rows 1-2 and the lone pixel at row 3, col 6).
LM = np.array([
    [0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 2, 2, 2, 0],
    [1, 1, 1, 2, 2, 2, 0],
    [3, 3, 3, 3, 3, 0, 2],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 1, 1],
], dtype=np.uint8)


def sel(pos=(), neg=(), bbox=None, lm=LM):
    return select(lm, np.array(pos, float).reshape(-1, 2), np.array(neg, float).reshape(-1, 2), bbox)


def mask_of(rows):
    return np.array(rows, dtype=bool)


TOP_LEFT_1 = mask_of([
    [0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
])
BOTTOM_RIGHT_1 = mask_of([
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 1, 1],
])
BLOCK_2 = mask_of([
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 0],
    [0, 0, 0, 1, 1, 1, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
])
ROW_3 = mask_of([
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
])
RETINA = LM != 0


def test_positive_click_picks_only_the_region_under_it():
    s = sel(pos=[[1.5, 1.5]])
    assert np.array_equal(s.mask, TOP_LEFT_1)  # not the other class-1 region
    assert s.picked == [1] and s.ignored_clicks == []
    assert np.array_equal(s.label_map, LM)


def test_two_clicks_in_one_class_keep_both_regions():
    s = sel(pos=[[0.5, 2.5], [6.5, 5.5]])
    assert np.array_equal(s.mask, TOP_LEFT_1 | BOTTOM_RIGHT_1)
    assert s.picked == [1]


def test_clicks_in_two_classes_give_the_union_in_click_order():
    s = sel(pos=[[4.5, 1.5], [2.5, 2.5]])
    assert np.array_equal(s.mask, BLOCK_2 | TOP_LEFT_1)
    assert s.picked == [2, 1]
    s = sel(pos=[[2.5, 2.5], [4.5, 1.5], [0.2, 3.9]])
    assert np.array_equal(s.mask, BLOCK_2 | TOP_LEFT_1 | ROW_3)
    assert s.picked == [1, 2, 3]


def test_regions_are_4_connected():
    # the lone class-2 pixel at (row 3, col 6) touches the block only at a corner
    s = sel(pos=[[6.5, 3.5]])
    assert s.mask.sum() == 1 and s.mask[3, 6]
    s = sel(pos=[[4.5, 1.5]])
    assert np.array_equal(s.mask, BLOCK_2)


def test_repeated_clicks_count_once():
    s = sel(pos=[[1.5, 1.5], [0.5, 1.5], [1.5, 1.5]])
    assert np.array_equal(s.mask, TOP_LEFT_1) and s.picked == [1]


def test_click_on_background_is_ignored():
    s = sel(pos=[[0.5, 0.5], [1.5, 1.5], [3.25, 4.75]])
    assert np.array_equal(s.mask, TOP_LEFT_1)
    assert s.ignored_clicks == [[0.5, 0.5], [3.25, 4.75]]
    s = sel(pos=[[0.5, 0.5]])
    assert not s.mask.any() and s.picked == [] and s.ignored_clicks == [[0.5, 0.5]]


def test_pixel_edges_decide_which_pixel_a_click_hits():
    # x = 2.99 is still column 2 (class 1); x = 3.0 is column 3 (class 2)
    assert sel(pos=[[2.99, 1.0]]).picked == [1]
    assert sel(pos=[[3.0, 1.0]]).picked == [2]
    # y = 3.0 is row 3 (class 3); y = 2.999 is row 2
    assert sel(pos=[[0.0, 3.0]]).picked == [3]
    assert sel(pos=[[0.0, 2.999]]).picked == [1]


def test_click_on_the_far_edge_takes_the_last_pixel():
    # callers clip clicks to [0, W] x [0, H]; x = W, y = H must land on the last column / row
    s = sel(pos=[[7.0, 6.0]])
    assert np.array_equal(s.mask, BOTTOM_RIGHT_1)


def test_no_positive_click_gives_every_layer():
    s = sel()
    assert np.array_equal(s.mask, RETINA)
    assert s.picked == [1, 2, 3]


def test_negative_click_removes_its_region():
    s = sel(neg=[[1.5, 2.5]])
    assert np.array_equal(s.mask, RETINA & ~TOP_LEFT_1)
    assert s.picked == [1, 2, 3]  # class 1 is still present (bottom right)
    want = LM.copy()
    want[1:3, 0:3] = 0
    assert np.array_equal(s.label_map, want)


def test_negative_click_on_a_picked_region_wins():
    s = sel(pos=[[1.5, 1.5], [4.5, 1.5]], neg=[[0.5, 1.5]])
    assert np.array_equal(s.mask, BLOCK_2)
    assert s.picked == [2] and s.ignored_clicks == [[1.5, 1.5]]


def test_negative_click_on_background_changes_nothing():
    s = sel(pos=[[1.5, 1.5]], neg=[[0.5, 0.5]])
    assert np.array_equal(s.mask, TOP_LEFT_1)
    assert np.array_equal(s.label_map, LM)


def test_box_keeps_pixels_whose_centre_is_inside():
    # box x 0.4..3.6, y 1.4..3.6: centres 0.5..3.5 in x (cols 0-3), 1.5..3.5 in y (rows 1-3)
    s = sel(bbox=np.array([0.4, 1.4, 3.6, 3.6]))
    want = mask_of([
        [0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ])
    assert np.array_equal(s.mask, want)
    assert s.picked == [1, 2, 3]
    assert np.array_equal(s.label_map, np.where(want, LM, 0))


def test_box_cuts_a_picked_region():
    # the class-2 block is cut to its first column by a box ending at x = 4
    s = sel(pos=[[3.5, 1.5]], bbox=np.array([3.0, 0.0, 4.0, 6.0]))
    want = np.zeros_like(LM, dtype=bool)
    want[1:3, 3] = True
    assert np.array_equal(s.mask, want) and s.picked == [2]


def test_box_on_whole_pixel_edges():
    # edges at integers: pixels 5..6 x 3..5, nothing else
    s = sel(bbox=np.array([5.0, 3.0, 7.0, 6.0]))
    want = np.zeros_like(LM, dtype=bool)
    want[3, 6] = True
    want[5, 5:7] = True
    assert np.array_equal(s.mask, want)


def test_click_outside_the_box_is_ignored():
    s = sel(pos=[[1.5, 1.5]], bbox=np.array([3.0, 0.0, 7.0, 6.0]))
    assert not s.mask.any() and s.ignored_clicks == [[1.5, 1.5]]


def test_ring_around_a_removed_bar_and_its_boxed_part():
    lm = np.array([
        [1, 1, 1, 1, 1],
        [1, 2, 2, 2, 1],
        [1, 1, 1, 1, 1],
    ], dtype=np.uint8)
    # removing the class-2 bar leaves class 1 one ring-shaped region
    s = sel(pos=[[0.5, 0.5]], neg=[[2.5, 1.5]], lm=lm)
    assert np.array_equal(s.mask, lm == 1)
    # a box over columns 0..1 keeps the ring's part there, still one region
    s = sel(pos=[[0.5, 0.5]], bbox=np.array([0.0, 0.0, 2.0, 3.0]), lm=lm)
    want = np.zeros_like(lm, dtype=bool)
    want[:, 0] = True
    want[0, 1] = want[2, 1] = True
    assert np.array_equal(s.mask, want)


def test_input_label_map_is_not_changed():
    lm = LM.copy()
    select(lm, np.array([[1.5, 1.5]]), np.array([[4.5, 1.5]]), np.array([0.0, 0.0, 3.0, 3.0]))
    assert np.array_equal(lm, LM)


def test_mask_and_label_map_agree():
    s = sel(pos=[[6.5, 5.5], [0.5, 3.5]], neg=[[4.5, 2.5]])
    assert s.mask.dtype == bool and s.mask.shape == LM.shape
    assert s.label_map.shape == LM.shape and s.label_map.dtype == LM.dtype
    assert (s.label_map[s.mask] != 0).all()
    assert np.array_equal(s.mask, BOTTOM_RIGHT_1 | ROW_3)
    assert s.picked == [1, 3]


def test_more_than_256_classes():
    # Models with K > 256 give uint16 label maps; 256 + k must stay distinct from k.
    lm = LM.astype(np.uint16) + np.where(LM > 0, 256, 0).astype(np.uint16)
    lm[5, 5:] = 1  # class 1 beside class 257, which wraps to 1 in uint8
    s = sel(pos=[[1.5, 1.5], [6.5, 5.5]], neg=[[4.5, 2.5]], lm=lm)
    assert s.picked == [257, 1]
    assert s.label_map.dtype == np.uint16
    assert np.array_equal(s.mask, TOP_LEFT_1 | BOTTOM_RIGHT_1)
    assert np.array_equal(s.label_map, np.where(BLOCK_2, 0, lm))  # the negative click removed class 258
    everything = sel(lm=lm)
    assert everything.picked == [1, 257, 258, 259]
