"""Dataset readers: CVAT for images 1.1 (task and project), Segmentation mask 1.1, plain folders,
hostile archives, the pixel-centre rasteriser and the split by volume."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cvat_sdk.masks import encode_mask
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from conftest import DATA
from sam2oct.data.datasets import load_dataset, split_by_volume
from sam2oct.data.samples import (FORMAT_CVAT, FORMAT_PLAIN, FORMAT_SEGMENTATION_MASK, DatasetError, rasterize,
                                  volume_of)
from sam2oct.geometry.images import read_image
from sam2oct.geometry.polygons import label_map_to_shapes, rasterize_shapes
from sam2oct.model.profiles import NR206_CLASSES

EXPORT = DATA / "cvat-export" / "synthetic_cvat_for_images_1.1.zip"
SYNTH_LABELS = DATA / "synthetic"
ABC = ("background", "A", "B", "C")


def png_bytes(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array), mode).save(buf, format="PNG")
    return buf.getvalue()


def gray_png(h, w, seed=0):
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8))


def polygon_xml(label, points, z=0):
    pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in points)
    return f'<polygon label="{label}" source="manual" occluded="0" points="{pts}" z_order="{z}"></polygon>'


def mask_xml(label, mask, z=0):
    *runs, x1, y1, x2, y2 = encode_mask(np.asarray(mask, dtype=bool))  # CVAT's own encoder
    return (f'<mask label="{label}" source="manual" occluded="0" rle="{", ".join(map(str, runs))}" '
            f'left="{x1}" top="{y1}" width="{x2 - x1 + 1}" height="{y2 - y1 + 1}" z_order="{z}"></mask>')


def cvat_xml(images, project=False, head=""):
    """annotations.xml as CVAT writes it; images: [(name, w, h, [shape xml], extra attrs)]."""
    meta = "<project><id>1</id></project>" if project else "<task><id>9</id></task>"
    body = "".join(
        f'<image id="{i}" name="{name}" {extra} width="{w}" height="{h}">{"".join(shapes)}</image>'
        for i, (name, w, h, shapes, extra) in enumerate(images))
    return (f'<?xml version="1.0" encoding="utf-8"?>{head}<annotations><version>1.1</version>'
            f"<meta>{meta}</meta>{body}</annotations>").encode()


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def load(path, names=ABC, **kw):
    return load_dataset(path, names, **kw)


# --- the real export -----------------------------------------------------------------------------


def test_sample_export_reads_back_to_the_synthetic_label_maps():
    ds = load(EXPORT, NR206_CLASSES)
    assert FORMAT_CVAT in ds.source and ds.skipped == {}
    assert ds.class_names == NR206_CLASSES
    assert [s.name for s in ds.samples] == ["bscan_768x496_s1.png", "bscan_750x500_s2.png", "bscan_512x885_s4.png"]
    with zipfile.ZipFile(EXPORT) as zf:
        for s in ds.samples:
            truth = np.asarray(Image.open(SYNTH_LABELS / s.name.replace(".png", "_labels.png")))
            assert s.labels.dtype == np.uint8 and np.array_equal(s.labels, truth), s.name
            assert np.array_equal(s.gray, read_image(zf.read(f"images/{s.name}")))
            assert s.gray.dtype == np.float32 and s.volume is None


def test_sample_export_unpacked_folder_and_bare_xml_read_the_same(tmp_path):
    with zipfile.ZipFile(EXPORT) as zf:
        zf.extractall(tmp_path / "export")
    zipped = load(EXPORT, NR206_CLASSES)
    for path in (tmp_path / "export", tmp_path / "export" / "annotations.xml"):
        ds = load(path, NR206_CLASSES)
        assert [s.name for s in ds.samples] == [s.name for s in zipped.samples]
        assert all(np.array_equal(a.labels, b.labels) and np.array_equal(a.gray, b.gray)
                   for a, b in zip(ds.samples, zipped.samples))


def test_zip_of_the_export_folder_is_found_inside_its_top_folder(tmp_path):
    with zipfile.ZipFile(EXPORT) as zf:
        members = {f"my_export/{n}": zf.read(n) for n in zf.namelist()}
    ds = load(write_zip(tmp_path / "nested.zip", members), NR206_CLASSES)
    assert len(ds.samples) == 3


# --- the rasteriser is the inverse of label_map_to_shapes --------------------------------------------


@st.composite
def layered_maps(draw):
    """Layer maps like B-scans: class k from a per-column boundary down, some layers missing in places,
    plus a few rectangular islands (holes in a layer, cut by label_map_to_shapes)."""
    h, w = draw(st.integers(4, 28)), draw(st.integers(4, 28))
    k = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tops = np.sort(rng.integers(0, h + 1, (k - 1, w)), axis=0)
    rows = np.arange(h)[:, None]
    labels = np.zeros((h, w), dtype=np.uint8)
    for c in range(1, k):
        labels[rows >= tops[c - 1]] = c
    for _ in range(draw(st.integers(0, 3))):
        y, x = rng.integers(0, h), rng.integers(0, w)
        labels[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = rng.integers(0, k)
    return labels, tuple(["background"] + [f"L{c}" for c in range(1, k)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layered_maps())
def test_exact_polygons_rasterize_back_to_the_label_map(case):
    labels, names = case
    shapes = label_map_to_shapes(labels, names, tolerance=0, min_area=0)
    assert np.array_equal(rasterize(shapes, *labels.shape, names), labels)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layered_maps(), st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([0, 4]))
def test_simplified_polygons_rasterize_to_the_same_partition_as_rasterize_shapes(case, tolerance, min_area):
    labels, names = case
    shapes = label_map_to_shapes(labels, names, tolerance=tolerance, min_area=min_area)
    index = {n: k for k, n in enumerate(names)}
    class_of = np.array([0] + [index[s["label"]] for s in shapes])
    expected = class_of[rasterize_shapes(shapes, labels.shape)]
    assert np.array_equal(rasterize(shapes, *labels.shape, names), expected)


def test_centre_rule_on_shared_and_diagonal_edges():
    def alone(shape, h, w):
        return rasterize([shape], h, w, ABC) > 0

    # two triangles sharing the diagonal of a 4x4 square; the diagonal runs through 4 pixel centres
    lower = {"label": "A", "type": "polygon", "points": [[0, 0], [4, 4], [0, 4]]}
    upper = {"label": "B", "type": "polygon", "points": [[0, 0], [4, 0], [4, 4]]}
    # an edge at x = 1.5 runs through the centres of column 1
    left = {"label": "C", "type": "polygon", "points": [[0, 0], [1.5, 0], [1.5, 2], [0, 2]]}
    right = {"label": "A", "type": "polygon", "points": [[1.5, 0], [4, 0], [4, 2], [1.5, 2]]}
    yy, xx = np.mgrid[:4, :4]
    for a, b, h in ((lower, upper, 4), (left, right, 2)):
        in_a, in_b = alone(a, h, 4), alone(b, h, 4)
        assert not (in_a & in_b).any() and (in_a | in_b).all()  # each centre on the shared edge goes to one side
    assert alone(lower, 4, 4)[yy > xx].all() and not alone(lower, 4, 4)[yy < xx].any()
    assert alone(left, 2, 4)[:, 0].all() and not alone(left, 2, 4)[:, 2:].any()
    both = rasterize([lower, upper], 4, 4, ABC)
    assert (both[yy > xx] == 1).all() and (both[yy < xx] == 2).all()


# --- CVAT for images: painting order, ignored shapes, labels ------------------------------------------


def test_z_order_then_document_order_decides_overlaps(tmp_path):
    square = [(0, 0), (6, 0), (6, 4), (0, 4)]
    right = [(3, 0), (6, 0), (6, 4), (3, 4)]
    mask = np.zeros((4, 6), bool)
    mask[1:3, 1:5] = True
    shapes = [
        polygon_xml("A", square, z=2),  # on top of everything with z 0 and 1
        polygon_xml("B", right, z=3),   # above A
        mask_xml("C", mask, z=0),       # under A: invisible
        polygon_xml("C", [(0, 3), (6, 3), (6, 4), (0, 4)], z=3),  # same z as B, later: wins on row 3
    ]
    xml = cvat_xml([("f.png", 6, 4, shapes, "")])
    ds = load(write_zip(tmp_path / "z.zip", {"annotations.xml": xml, "images/f.png": gray_png(4, 6)}))
    expected = np.array([
        [1, 1, 1, 2, 2, 2],
        [1, 1, 1, 2, 2, 2],
        [1, 1, 1, 2, 2, 2],
        [3, 3, 3, 3, 3, 3],
    ])
    assert np.array_equal(ds.samples[0].labels, expected)


def test_masks_and_background_label_paint_in_order(tmp_path):
    mask = np.zeros((3, 5), bool)
    mask[:, 2] = True
    shapes = [polygon_xml("A", [(0, 0), (5, 0), (5, 3), (0, 3)]), mask_xml("background", mask),
              mask_xml("OCT_Object_2", mask[:, ::-1] & (np.arange(3)[:, None] == 0))]
    xml = cvat_xml([("f.png", 5, 3, shapes, "")])
    ds = load(write_zip(tmp_path / "m.zip", {"annotations.xml": xml, "images/f.png": gray_png(3, 5)}))
    assert np.array_equal(ds.samples[0].labels, [[1, 1, 2, 1, 1], [1, 1, 0, 1, 1], [1, 1, 0, 1, 1]])


def test_ignored_shapes_and_empty_frames_are_counted(tmp_path):
    shapes = [
        polygon_xml("A", [(0, 0), (4, 0), (4, 4), (0, 4)]),
        '<box label="A" xtl="0" ytl="0" xbr="2" ybr="2" z_order="0"></box>',
        polygon_xml("B", [(0, 0), (4, 4)]),
        '<box label="B" xtl="0" ytl="0" xbr="2" ybr="2" z_order="0"></box>',
        '<polyline label="A" points="0,0;3,3" z_order="0"></polyline>',
        '<points label="A" points="1,1" z_order="0"></points>',
        '<ellipse label="A" cx="2" cy="2" rx="1" ry="1" z_order="0"></ellipse>',
        '<cuboid label="A" z_order="0"></cuboid>',
        '<skeleton label="A" z_order="0"><points label="p" points="1,1"></points></skeleton>',
        '<tag label="A" source="manual"><attribute name="q">1</attribute></tag>',
    ]
    xml = cvat_xml([("a.png", 4, 4, shapes, ""), ("b.png", 4, 4, [], ""),
                    ("c.png", 4, 4, ['<tag label="A" source="manual"></tag>'], "")])
    # b.png and c.png are not in the archive: frames without shapes are never read
    ds = load(write_zip(tmp_path / "s.zip", {"annotations.xml": xml, "images/a.png": gray_png(4, 4)}))
    assert [s.name for s in ds.samples] == ["a.png"]
    assert ds.skipped == {"box": 2, "polyline": 1, "points": 1, "ellipse": 1, "cuboid": 1, "skeleton": 1,
                          "tag": 2, "frames without shapes": 2, "polygons with fewer than 3 points": 1}
    assert (ds.samples[0].labels == 1).all()


def test_unknown_label_names_it_and_the_known_ones(tmp_path):
    xml = cvat_xml([("a.png", 4, 4, [polygon_xml("Fluid", [(0, 0), (4, 0), (4, 4)])], "")])
    path = write_zip(tmp_path / "u.zip", {"annotations.xml": xml})  # fails before the (absent) image
    with pytest.raises(DatasetError, match=r"unknown label 'Fluid'.*background, A, B, C.*OCT_Object_<k>") as err:
        load(path)
    assert err.value.option == "class_names"  # front doors name their class-names option
    xml = cvat_xml([("a.png", 4, 4, [polygon_xml("nfl", [(0, 0), (4, 0), (4, 4)])], "")])
    with pytest.raises(DatasetError, match=r"unknown label 'nfl' \(.*n.zip: annotations.xml, image 'a.png'\) \(did you mean 'NFL'\?\)"):
        load(write_zip(tmp_path / "n.zip", {"annotations.xml": xml}), NR206_CLASSES)


def test_project_export_with_subsets_and_folders(tmp_path):
    full = [(0, 0), (4, 0), (4, 3), (0, 3)]
    images = [("P1/001.png", 4, 3, [polygon_xml("A", full)], 'subset="Train" task_id="1"'),
              ("P1/002.png", 4, 3, [polygon_xml("B", full)], 'subset="Train" task_id="1"'),
              ("P2/001.png", 4, 3, [polygon_xml("C", full)], 'subset="Validation" task_id="2"')]
    members = {"annotations.xml": cvat_xml(images, project=True),
               "images/Train/P1/001.png": gray_png(3, 4, 1), "images/Train/P1/002.png": gray_png(3, 4, 2),
               "images/Validation/P2/001.png": gray_png(3, 4, 3)}
    ds = load(write_zip(tmp_path / "p.zip", members))
    assert "project export" in ds.source
    assert [(s.name, s.volume, int(s.labels[0, 0])) for s in ds.samples] == [
        ("Train/P1/001.png", "P1", 1), ("Train/P1/002.png", "P1", 2), ("Validation/P2/001.png", "P2", 3)]
    assert np.array_equal(ds.samples[2].gray, read_image(gray_png(3, 4, 3)))


def test_video_task_frames_without_extension_are_found(tmp_path):
    xml = cvat_xml([("frame_000000", 4, 3, [polygon_xml("A", [(0, 0), (4, 0), (4, 3)])], "")])
    ds = load(write_zip(tmp_path / "v.zip", {"annotations.xml": xml, "images/frame_000000.PNG": gray_png(3, 4)}))
    assert ds.samples[0].name == "frame_000000.PNG" and ds.samples[0].volume == "frame"


def test_cvat_for_video_export_is_refused_with_the_format_to_use(tmp_path):
    xml = (b'<annotations><version>1.1</version><meta/><track id="0" label="A">'
           b'<polygon frame="0" points="0,0;1,1;0,1" outside="0" occluded="0" keyframe="1"/></track></annotations>')
    with pytest.raises(DatasetError, match="CVAT for video.*'CVAT for images 1.1'"):
        load(write_zip(tmp_path / "v.zip", {"annotations.xml": xml}))


# --- hostile and broken archives ----------------------------------------------------------------------


def good_members():
    xml = cvat_xml([("a.png", 4, 4, [polygon_xml("A", [(0, 0), (4, 0), (4, 4), (0, 4)])], "")])
    return {"annotations.xml": xml, "images/a.png": gray_png(4, 4)}


@pytest.mark.parametrize("evil", ["../evil.png", "images/../../evil.png", "/etc/evil.png", "C:/evil.png",
                                  "images\\..\\evil.png"])
def test_zip_slip_member_names_are_refused(tmp_path, evil):
    path = write_zip(tmp_path / "slip.zip", {**good_members(), evil: b"x"})
    with pytest.raises(DatasetError, match="unsafe path"):
        load(path)
    assert not (tmp_path / "evil.png").exists()


def test_unsafe_image_name_in_the_xml_is_refused(tmp_path):
    xml = cvat_xml([("../../secret.png", 4, 4, [polygon_xml("A", [(0, 0), (4, 0), (4, 4)])], "")])
    (tmp_path / "export" / "images").mkdir(parents=True)
    (tmp_path / "export" / "annotations.xml").write_bytes(xml)
    (tmp_path / "secret.png").write_bytes(gray_png(4, 4))
    with pytest.raises(DatasetError, match="unsafe path '../../secret.png'"):
        load(tmp_path / "export")


def test_oversized_members_are_refused_from_the_header(tmp_path):
    path = write_zip(tmp_path / "big.zip", {**good_members(), "images/a.png": bytes(200_000)})
    with pytest.raises(DatasetError, match=r"images/a.png is 200000 bytes, over the limit of 100000"):
        load(path, max_member_bytes=100_000)


def test_a_member_larger_than_its_header_says_is_stopped_while_reading(tmp_path):
    path = write_zip(tmp_path / "lie.zip", {**good_members(), "images/a.png": bytes(300_000)})
    raw = bytearray(path.read_bytes())
    # rewrite the uncompressed size of images/a.png in its central directory entry to 10 bytes
    cd = raw.rfind(b"images/a.png") - 46  # the central directory entry's fixed part precedes the name
    assert raw[cd:cd + 4] == b"PK\x01\x02"
    raw[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    # zipfile stops at the declared size and then fails the CRC; the cap would stop it otherwise
    with pytest.raises(DatasetError, match="images/a.png (is corrupt in the archive|.*over the limit)"):
        load(path, max_member_bytes=100_000)


def test_total_bytes_and_member_count_are_capped(tmp_path):
    members = {**good_members(), **{f"junk/{i}.bin": b"x" for i in range(20)}}
    path = write_zip(tmp_path / "many.zip", members)
    with pytest.raises(DatasetError, match="holds 22 entries, over the limit of 10"):
        load(path, max_members=10)
    with pytest.raises(DatasetError, match="limit of 100 bytes in all"):
        load(path, max_total_bytes=100)


@pytest.mark.parametrize("head", [
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>',
    '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE annotations SYSTEM "http://example.invalid/a.dtd">',
])
def test_xml_with_a_dtd_is_refused(tmp_path, head):
    xml = cvat_xml([("a.png", 4, 4, [polygon_xml("A", [(0, 0), (4, 0), (4, 4)])], "")], head=head)
    with pytest.raises(DatasetError, match="declares a DTD"):
        load(write_zip(tmp_path / "dtd.zip", {"annotations.xml": xml, "images/a.png": gray_png(4, 4)}))


def test_broken_xml_and_broken_shapes_name_the_place(tmp_path):
    cases = {
        b"<annotations><image ": "not well-formed XML",
        cvat_xml([("a.png", 4, 4, ['<polygon label="A" points="0,0;x,1;2,2"/>'], "")]): "image 'a.png', shape 1: polygon points",
        cvat_xml([("a.png", 4, 4, ['<mask label="A" rle="1, 2" left="0" top="0" width="2" height="2"/>'], "")]):
            "image 'a.png'.*run lengths add up to 3, but the box holds 4",
        cvat_xml([("a.png", 4, 4, ['<mask label="A" rle="0, 4" left="3" top="3" width="2" height="2"/>'], "")]):
            "image 'a.png'.*outside the 4x4 image",
    }
    for i, (xml, message) in enumerate(cases.items()):
        path = write_zip(tmp_path / f"b{i}.zip", {"annotations.xml": xml, "images/a.png": gray_png(4, 4)})
        with pytest.raises(DatasetError, match=message):
            load(path)


def test_missing_undecodable_and_mismatched_images_are_named(tmp_path):
    members = good_members()
    del members["images/a.png"]
    with pytest.raises(DatasetError, match=r"image 'a.png'.*images/a.png is missing.*'Save images'"):
        load(write_zip(tmp_path / "miss.zip", members))
    with pytest.raises(DatasetError, match=r"images/a.png: image is not a decodable image"):
        load(write_zip(tmp_path / "bad.zip", {**good_members(), "images/a.png": b"\x89PNG not really"}))
    with pytest.raises(DatasetError, match=r"images/a.png is 5x4, but annotations.xml says 4x4"):
        load(write_zip(tmp_path / "size.zip", {**good_members(), "images/a.png": gray_png(4, 5)}))


def test_not_a_dataset_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found"):
        load(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a folder, a zip archive or an annotations.xml"):
        load(tmp_path / "notes.txt")
    with pytest.raises(DatasetError, match="not an export this can read"):
        load(write_zip(tmp_path / "other.zip", {"readme.md": b"hi", "data/x.png": gray_png(2, 2)}))
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(EXPORT.read_bytes()[:-2000])
    with pytest.raises(DatasetError, match="cut.zip: not a readable zip archive"):
        load(truncated, NR206_CLASSES)


def test_folder_symlink_out_of_the_dataset_is_refused(tmp_path):
    (tmp_path / "export" / "images").mkdir(parents=True)
    members = good_members()
    (tmp_path / "export" / "annotations.xml").write_bytes(members["annotations.xml"])
    (tmp_path / "outside.png").write_bytes(members["images/a.png"])
    (tmp_path / "export" / "images" / "a.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(DatasetError, match="links outside the dataset folder"):
        load(tmp_path / "export")


# --- Segmentation mask 1.1 ----------------------------------------------------------------------------

LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\nA:255,0,0::\nB:0,128,0::\nFluid:0,0,255::\n"
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 0], [0, 0, 255]], dtype=np.uint8)


def smask_members(index_maps, image_ext=".jpg"):
    members = {"labelmap.txt": LABELMAP,
               "ImageSets/Segmentation/default.txt": "\n".join(index_maps) + "\n"}
    for name, index in index_maps.items():
        index = np.asarray(index)
        members[f"SegmentationClass/{name}.png"] = png_bytes(COLOURS[index])
        members[f"SegmentationObject/{name}.png"] = png_bytes(COLOURS[index])
        buf = io.BytesIO()
        Image.fromarray(np.full(index.shape, 90, np.uint8)).save(buf, format="PNG" if image_ext == ".png" else "JPEG")
        members[f"JPEGImages/{name}{image_ext}"] = buf.getvalue()
    return members


def test_segmentation_mask_export_colours_map_to_classes(tmp_path):
    members = smask_members({"vol1_000": [[0, 1, 1], [2, 2, 0]], "vol1_001": [[1, 1, 1], [0, 0, 0]],
                             "empty": [[0, 0, 0], [0, 0, 0]]})
    ds = load(write_zip(tmp_path / "s.zip", members))
    assert FORMAT_SEGMENTATION_MASK in ds.source
    assert ds.skipped == {"frames without shapes": 1}
    assert [(s.name, s.volume) for s in ds.samples] == [("vol1_000.jpg", "vol1"), ("vol1_001.jpg", "vol1")]
    assert np.array_equal(ds.samples[0].labels, [[0, 1, 1], [2, 2, 0]])
    assert ds.samples[0].gray.shape == (2, 3)


def test_segmentation_mask_palette_and_grey_masks(tmp_path):
    members = smask_members({"a": [[0, 1], [2, 1]]}, image_ext=".png")
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    pal.putpalette(COLOURS.ravel().tolist())
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    members["SegmentationClass/a.png"] = buf.getvalue()
    assert np.array_equal(load(write_zip(tmp_path / "p.zip", members)).samples[0].labels, [[0, 1], [2, 1]])
    members["SegmentationClass/a.png"] = png_bytes(np.array([[2, 2], [0, 1]], np.uint8))  # labelmap line indices
    assert np.array_equal(load(write_zip(tmp_path / "g.zip", members)).samples[0].labels, [[2, 2], [0, 1]])


def test_segmentation_mask_errors(tmp_path):
    members = smask_members({"a": [[0, 3], [1, 1]]})  # colour 3 is "Fluid": not a class
    with pytest.raises(DatasetError, match="unknown label 'Fluid'.*SegmentationClass/a.png"):
        load(write_zip(tmp_path / "f.zip", members))
    members = smask_members({"a": [[0, 1], [1, 1]]})
    members["SegmentationClass/a.png"] = png_bytes(np.array([[[0, 0, 0], [9, 9, 9]]] * 2, np.uint8))
    with pytest.raises(DatasetError, match="colour 9,9,9, which labelmap.txt does not name"):
        load(write_zip(tmp_path / "c.zip", members))
    members = smask_members({"a": [[0, 1], [1, 1]]})
    del members["JPEGImages/a.jpg"]
    with pytest.raises(DatasetError, match=r"no image JPEGImages/a.\* .*'Save images'"):
        load(write_zip(tmp_path / "n.zip", members))
    members = smask_members({"a": [[0, 1], [1, 1]]})
    del members["labelmap.txt"]
    with pytest.raises(DatasetError, match="without labelmap.txt"):
        load(write_zip(tmp_path / "l.zip", members))


# --- plain folders ------------------------------------------------------------------------------------


def make_plain(root, items, classes=None):
    for name, labels in items.items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).write_bytes(gray_png(*np.shape(labels)))
        if labels is not None and np.size(labels):
            (root / "labels" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "labels" / Path(name).with_suffix(".png")).write_bytes(png_bytes(np.array(labels, np.uint8)))
    if classes is not None:
        (root / "classes.json").write_text(json.dumps({"classes": classes}))
    return root


def test_plain_folder_with_and_without_classes_json(tmp_path):
    root = make_plain(tmp_path / "plain", {"eye1/000.png": [[0, 1], [2, 3]], "eye1/001.png": [[1, 1], [1, 1]],
                                           "eye2/000.png": [[0, 0], [0, 0]]})
    (root / "images" / "extra.png").write_bytes(gray_png(2, 2))  # no label: skipped
    ds = load(root)
    assert FORMAT_PLAIN in ds.source
    assert ds.skipped == {"images without labels": 1, "frames without shapes": 1}
    assert [(s.name, s.volume) for s in ds.samples] == [("eye1/000.png", "eye1"), ("eye1/001.png", "eye1")]
    assert np.array_equal(ds.samples[0].labels, [[0, 1], [2, 3]])
    # classes.json in another order maps its indices to the model's classes by name
    (root / "classes.json").write_text(json.dumps(["background", "C", "OCT_Object_2", "A"]))
    assert np.array_equal(load(root).samples[0].labels, [[0, 3], [2, 1]])


def test_plain_folder_errors(tmp_path):
    root = make_plain(tmp_path / "p1", {"a.png": [[0, 4], [0, 0]]})
    with pytest.raises(DatasetError, match="labels/a.png holds class 4, but there are only 4 classes"):
        load(root)
    root = make_plain(tmp_path / "p2", {"a.png": [[0, 1], [0, 0]]}, classes=["background", "Cyst"])
    with pytest.raises(DatasetError, match="unknown label 'Cyst' \\(classes.json\\)"):
        load(root)
    root = make_plain(tmp_path / "p3", {"a.png": [[0, 1], [0, 0]]})
    (root / "labels" / "b.png").write_bytes(png_bytes(np.zeros((2, 2), np.uint8)))
    with pytest.raises(DatasetError, match="labels/b.png has no image images/b"):
        load(root)
    root = make_plain(tmp_path / "p4", {"a.png": [[0, 1], [0, 0]]})
    (root / "labels" / "a.png").write_bytes(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(DatasetError, match="labels/a.png is RGB: label PNGs must hold class indices"):
        load(root)


def test_more_than_256_classes_give_uint16_labels(tmp_path):
    names = ("background",) + tuple(f"c{k}" for k in range(1, 300))
    shapes = [{"label": "c299", "type": "polygon", "points": [[0, 0], [2, 0], [2, 2], [0, 2]]}]
    got = rasterize(shapes, 2, 3, names)
    assert got.dtype == np.uint16 and got.tolist() == [[299, 299, 0], [299, 299, 0]]


# --- volumes and the split ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, volume", [
    ("P001/OD/003.png", "P001/OD"), ("vol3_012.png", "vol3"), ("Willis_B_716_0_bscan_u8.png", None),
    ("Willis_B_716_2.png", "Willis_B_716"), ("scan-7.tif", "scan"), ("scan12.png", None),
    ("bscan_768x496_s1.png", None), ("001.png", None), ("frame_000000", "frame"),
])
def test_volume_of(name, volume):
    assert volume_of(name) == volume


def fake_dataset(volumes):
    from sam2oct.data.samples import Dataset, Sample

    z = np.zeros((1, 1), np.float32)
    samples = [Sample(f"{v}_{i:03d}.png" if v else f"single{i}.png", z, np.ones((1, 1), np.uint8), v)
               for v, n in volumes for i in range(n)]
    return Dataset(samples, ABC, {"box": 1}, "test")


def test_split_by_volume_keeps_volumes_together():
    ds = fake_dataset([("a", 5), ("b", 5), ("c", 5), ("d", 5), (None, 1), (None, 1)])
    for seed in range(10):
        train, val = split_by_volume(ds, 0.25, seed)
        assert len(train) + len(val) == len(ds) and val.samples and train.samples
        train_vols = {s.volume or s.name for s in train.samples}
        assert not train_vols & {s.volume or s.name for s in val.samples}
        assert 4 <= len(val) <= 7  # about a quarter of 22, in whole volumes
        assert val.class_names == ABC and val.skipped == {"box": 1} and "validation" in val.source
    a, b = split_by_volume(ds, 0.25, 3), split_by_volume(ds, 0.25, 3)
    assert [s.name for s in a[1].samples] == [s.name for s in b[1].samples]
    assert len({tuple(s.name for s in split_by_volume(ds, 0.25, seed)[1].samples) for seed in range(10)}) > 1


def test_split_by_volume_needs_two_volumes():
    with pytest.raises(DatasetError, match="one volume"):
        split_by_volume(fake_dataset([("a", 4)]), 0.5, 0)
    with pytest.raises(ValueError):
        split_by_volume(fake_dataset([("a", 4), ("b", 1)]), 1.0, 0)
    train, val = split_by_volume(fake_dataset([("a", 4), ("b", 1)]), 0.9, 0)
    assert train.samples and val.samples  # never everything on one side
    for seed in range(5):  # a small fraction never takes the big volume
        train, val = split_by_volume(fake_dataset([("big", 20), ("b", 2), ("c", 3)]), 0.05, seed)
        assert {s.volume for s in val.samples} == {"b"}


@pytest.mark.parametrize("n_classes", [1, 2, 256, 257, 65536, 65537, 70000])
def test_label_dtype_holds_every_class_index(n_classes):
    """Issue 15, defect 10: 70000 classes in uint16 wrapped indices above 65535 round to small ones."""
    from sam2oct.data.samples import label_dtype

    dtype = label_dtype(n_classes)
    assert np.iinfo(dtype).max >= n_classes - 1
    assert int(np.array(n_classes - 1).astype(dtype)) == n_classes - 1  # the last class survives the cast
    assert np.dtype(dtype).itemsize <= max(1, np.dtype(np.min_scalar_type(n_classes - 1)).itemsize * 2)


def test_label_dtype_refuses_what_no_label_map_holds():
    from sam2oct.data.samples import label_dtype

    for n in (0, -3, 2**32 + 1):
        with pytest.raises(ValueError, match=str(n)):
            label_dtype(n)


def test_rasterize_paints_a_class_index_above_65535():
    names = [f"c{k}" for k in range(70000)]
    square = {"type": "polygon", "label": "c69999", "points": [1, 1, 5, 1, 5, 5, 1, 5]}
    labels = rasterize([square], 8, 8, names)
    assert labels.max() == 69999 and (labels == 69999).sum() == 16


# --- 16-bit frames cut to 8 bits by "Segmentation mask 1.1" (issue 19, trip 2) -------------------------

SAMPLE_16 = DATA / "bscan_768x496_s1_16bit.png"  # the 16-bit synthetic sample
TWIN_8 = DATA / "bscan_768x496_s1.png"
SPECTRALIS_8 = DATA / "spectralis" / "Willis_B_716_0_bscan_u8.png"


def _sixteen_bit():
    return np.asarray(Image.open(SAMPLE_16), dtype=np.int64)


def test_cut_frames_are_told_from_8_bit_ones():
    from sam2oct.data.segmentation_mask import looks_cut_to_8_bits

    v16 = _sixteen_bit()
    twin = np.asarray(Image.open(TWIN_8), dtype=np.int64)
    # This sample is its 8-bit twin times 257, so mod 256 gives the twin back exactly: nothing
    # was lost, and nothing may be said.
    assert np.array_equal(v16 % 256, twin)
    assert not looks_cut_to_8_bits(twin / 255) and not looks_cut_to_8_bits((v16 % 256) / 255)
    assert not looks_cut_to_8_bits(np.asarray(Image.open(SPECTRALIS_8), dtype=np.float64) / 255)
    # The same frames as scanners store them, 10-, 12- and 14-bit data in 16-bit files, cut mod 256.
    for bits in (10, 12, 14):
        assert looks_cut_to_8_bits(((v16 >> (16 - bits)) % 256) / 255), bits
        spectralis = np.asarray(Image.open(SPECTRALIS_8), dtype=np.int64) * (2**bits - 1) // 255
        assert looks_cut_to_8_bits((spectralis % 256) / 255), bits
        # ...and the frame itself, read as CVAT for images keeps it (16-bit, scaled), is not judged cut
        assert not looks_cut_to_8_bits((v16 >> (16 - bits)) / (2**bits - 1))


def _smask_zip(path, frames):
    """A Segmentation mask 1.1 export of real-sized frames {name: 8-bit array}, one layer band each."""
    members = {"labelmap.txt": LABELMAP, "ImageSets/Segmentation/default.txt": "\n".join(frames) + "\n"}
    for name, frame in frames.items():
        index = np.zeros(frame.shape, np.uint8)
        index[200:260] = 1
        members[f"SegmentationClass/{name}.png"] = png_bytes(COLOURS[index])
        members[f"JPEGImages/{name}.png"] = png_bytes(frame.astype(np.uint8))
    return write_zip(path, members)


def test_a_segmentation_mask_export_of_cut_frames_is_warned_about_once(tmp_path, caplog):
    v16 = _sixteen_bit()
    cut = ((v16 >> 4) % 256).astype(np.uint8)
    twin = np.asarray(Image.open(TWIN_8))
    with caplog.at_level("WARNING", logger="sam2oct"):
        ds = load(_smask_zip(tmp_path / "cut.zip", {"v_000": cut, "v_001": cut, "v_002": twin}))
    assert len(ds.samples) == 3
    (record,) = [r for r in caplog.records if r.name.startswith("sam2oct")]
    message = record.getMessage()
    assert "2 of 3 images" in message and "JPEGImages/v_000.png" in message
    assert "mod 256" in message and "'CVAT for images 1.1'" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="sam2oct"):
        load(_smask_zip(tmp_path / "fine.zip", {"v_000": twin}))
    assert not [r for r in caplog.records if r.name.startswith("sam2oct")]
