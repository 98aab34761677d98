"""Label tables: text format, bundled tables, channel conversion, checks and remapping."""

from __future__ import annotations

import numpy as np
import pytest

from medgen3d.errors import InputError
from medgen3d.labels import (
    Label,
    LabelTable,
    bundled_table,
    label_mapping,
    read_label_mapping,
)

TABLE_TEXT = """\
# value  name   colour
0   background  #000000
2   right_lung  #4f9fd0   free text after the colour
7   heart

# a comment between entries
300 vessel #ABCDEF
"""


@pytest.fixture
def sparse_table() -> LabelTable:
    """Non-contiguous values, one above 255."""
    return LabelTable.from_text(TABLE_TEXT, "sparse.txt")


def test_parse_reads_values_names_and_colours(sparse_table):
    assert sparse_table.values == (0, 2, 7, 300)
    assert sparse_table.names == ("background", "right_lung", "heart", "vessel")
    colours = [label.colour for label in sparse_table.labels]
    assert colours[0] == "#000000"
    assert colours[1] == "#4f9fd0"
    assert colours[3] == "#ABCDEF"
    # A missing colour is filled from the palette, distinct from the others here.
    assert colours[2].startswith("#")
    assert len(colours[2]) == 7
    assert colours[2] not in ("#000000", "#4f9fd0")
    assert len(sparse_table) == 4
    assert sparse_table.value_of("heart") == 7
    with pytest.raises(KeyError, match="spleen"):
        sparse_table.value_of("spleen")


def test_dict_round_trip(sparse_table):
    d = sparse_table.to_dict()
    assert d["values"] == [0, 2, 7, 300]
    assert LabelTable.from_dict(d) == sparse_table


def test_read_from_file(tmp_path, sparse_table):
    path = tmp_path / "table.txt"
    path.write_text(TABLE_TEXT)
    assert LabelTable.read(path) == sparse_table


def test_read_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(InputError) as excinfo:
        LabelTable.read(path)
    assert excinfo.value.path == path
    assert "absent.txt" in str(excinfo.value)


def test_rgba():
    assert Label(1, "x", "#ff8000").rgba == pytest.approx((1.0, 128 / 255, 0.0, 1.0))


def test_bundled_thorax_phantom():
    table = bundled_table("thorax_phantom")
    assert len(table) == 9
    assert table.values == tuple(range(9))
    assert table.names[0] == "background"
    assert table.value_of("heart") == 4
    assert table.value_of("left_lung") == 3
    assert table.value_of("right_lung") == 2
    assert table.value_of("spine") == 8
    assert all(len(label.colour) == 7 for label in table.labels)


def test_channels_round_trip_with_a_non_contiguous_table(sparse_table):
    labels = np.random.default_rng(0).choice(np.array([0, 2, 7, 300], np.uint16), (5, 6, 7))
    channels = sparse_table.to_channels(labels)
    assert channels.dtype == np.uint8
    assert channels.shape == labels.shape
    assert set(np.unique(channels).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(channels[labels == 300], 3)
    np.testing.assert_array_equal(channels[labels == 7], 2)
    back = sparse_table.from_channels(channels)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_from_channels_uses_uint8_for_small_tables():
    table = bundled_table("thorax_phantom")
    channels = np.arange(9, dtype=np.uint8).reshape(3, 3)
    back = table.from_channels(channels)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, channels)


def test_check_values_names_the_file_and_the_unknown_values(sparse_table):
    labels = np.array([[0, 2, 5], [9, 7, 5]], np.uint16)
    with pytest.raises(InputError) as excinfo:
        sparse_table.check_values(labels, "case_01/label.nii.gz")
    message = str(excinfo.value)
    assert "label.nii.gz" in message
    assert "5, 9" in message
    assert excinfo.value.path is not None
    assert excinfo.value.path.name == "label.nii.gz"
    with pytest.raises(InputError):
        sparse_table.to_channels(labels, "case_01/label.nii.gz")
    sparse_table.check_values(np.array([0, 300, 2], np.uint16))  # all known: no error


def test_remap_translates_values(sparse_table):
    labels = np.array([[0, 10, 11], [12, 10, 0]], np.uint8)
    out = sparse_table.remap(labels, {0: 0, 10: 2, 11: 300, 12: 0, 99: 7}, "ds/label.nii.gz")
    np.testing.assert_array_equal(out, [[0, 2, 300], [0, 2, 0]])
    assert out.dtype == np.uint16  # the table has a value above 255
    small = bundled_table("thorax_phantom").remap(labels, {0: 0, 10: 3, 11: 2, 12: 6})
    assert small.dtype == np.uint8
    np.testing.assert_array_equal(small, [[0, 3, 2], [6, 3, 0]])


def test_remap_rejects_unmapped_values_naming_the_source(sparse_table):
    labels = np.array([0, 10, 11, 12], np.uint8)
    with pytest.raises(InputError) as excinfo:
        sparse_table.remap(labels, {0: 0, 10: 2}, "ds/label.nii.gz")
    message = str(excinfo.value)
    assert "label.nii.gz" in message
    assert "11, 12" in message


def test_remap_rejects_targets_outside_the_table(sparse_table):
    with pytest.raises(InputError, match="5"):
        sparse_table.remap(np.array([0, 1], np.uint8), {0: 0, 1: 5})


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("0 background\nfoo bar\n", 2),
        ("# header\n0 background\n\n-1 negative\n", 4),
        ("0 background\n1\n", 2),
        ("0 background\n1.5 half\n", 2),
    ],
)
def test_parse_errors_name_the_file_and_the_line(text, line):
    with pytest.raises(InputError) as excinfo:
        LabelTable.from_text(text, "my_table.txt")
    message = str(excinfo.value)
    assert "my_table.txt" in message
    assert f"line {line}" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0 background\n2 a\n2 b\n", "repeat"),
        ("0 background\n1 lung\n2 lung\n", "repeat"),
        ("1 lung\n0 background\n", "background"),
        ("# nothing\n", "background"),
    ],
)
def test_invalid_tables_are_rejected_naming_the_file(text, words):
    with pytest.raises(InputError) as excinfo:
        LabelTable.from_text(text, "bad.txt")
    assert "bad.txt" in str(excinfo.value)
    assert words in str(excinfo.value)


def test_remap_ignores_keys_absent_from_the_volume():
    table = bundled_table("thorax_phantom")
    labels = np.array([0, 12, 12], np.uint8)
    # Keys that do not occur (negative, or above the largest value) change nothing.
    out = table.remap(labels, {0: 0, 12: 6, -1: 0, 500: 1})
    np.testing.assert_array_equal(out, [0, 6, 6])


def test_label_mapping_file_reads_pairs_ranges_and_ignores_comments(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("# user -> model\n0 0\n12 3  # left lung\n\n40\t0\n100-102 7\n")
    assert read_label_mapping(path) == {0: 0, 12: 3, 40: 0, 100: 7, 101: 7, 102: 7}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0 0\n5 lung\n", "line 2"),
        ("0 0\n9-3 1\n", "line 2"),
        ("0 0\n3 1\n1-4 2\n", "mapped twice"),
        ("# nothing\n", "empty"),
    ],
)
def test_bad_label_mapping_file_is_named_with_the_problem(tmp_path, text, problem):
    path = tmp_path / "map.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as caught:
        read_label_mapping(path)
    assert caught.value.path == path


def test_conform_keeps_table_values_and_maps_a_foreign_convention(sparse_table):
    own = np.array([[0, 2], [7, 300]])
    assert sparse_table.conform(own, {5: 2}) is own
    foreign = np.array([[0, 5], [9, 5]])
    mapped = sparse_table.conform(foreign, {0: 0, 5: 2, 9: 300})
    np.testing.assert_array_equal(mapped, [[0, 2], [300, 2]])


def test_conform_names_the_file_for_values_no_convention_knows(sparse_table):
    with pytest.raises(InputError, match="no entry in the label mapping") as caught:
        sparse_table.conform(np.array([0, 5, 6]), {0: 0, 5: 2}, "mask.nii.gz")
    assert str(caught.value.path) == "mask.nii.gz"
    with pytest.raises(InputError, match="not in the label table"):
        sparse_table.conform(np.array([0, 5]), None, "mask.nii.gz")


def test_mappings_are_found_by_file_or_bundled_name(tmp_path):
    assert label_mapping("freesurfer_to_brain_mri")[17] == 18  # left hippocampus
    path = tmp_path / "mine.txt"
    path.write_text("0 0\n5 1\n")
    assert label_mapping(path) == {0: 0, 5: 1}
    with pytest.raises(InputError, match="freesurfer_to_brain_mri") as caught:
        label_mapping("no_such_mapping")
    assert str(caught.value.path) == "no_such_mapping"


@pytest.mark.parametrize(
    ("mapping", "table"),
    [
        ("totalsegmentator_to_thorax_phantom", "thorax_phantom"),
        ("totalsegmentator_to_ct_thorax", "resources/labels/ct_thorax.txt"),
        ("totalsegmentator_to_headneck_ct", "resources/labels/headneck_ct.txt"),
    ],
)
def test_totalsegmentator_mappings_name_the_classes_as_totalsegmentator_does(
    shared_data, mapping, table
):
    """The class names in the mapping's comments are TotalSegmentator's own for every class
    of the shared 'total' output, and every value of that output maps into the table."""
    from pathlib import Path

    import nibabel as nib

    rows = (shared_data / "ct_abdomen" / "labels.txt").read_text().splitlines()
    theirs = dict(row.split()[:2] for row in rows if row and not row.startswith("#"))
    repository = Path(__file__).parents[1]
    text = (repository / "src" / "medgen3d" / "labels" / f"{mapping}.txt").read_text()
    ours = {
        line.split()[0]: line.split("# ")[1].split(" ->")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert {k: ours[k] for k in theirs} == theirs
    target = bundled_table(table) if "/" not in table else LabelTable.read(repository / table)
    labels = np.asarray(nib.load(shared_data / "ct_abdomen" / "label.nii.gz").dataobj)
    mapped = target.remap(labels, label_mapping(mapping))
    assert set(np.unique(mapped).tolist()) <= set(target.values)


def test_unlisted_values_go_where_the_mapping_says_and_only_then(tmp_path, sparse_table):
    path = tmp_path / "map.txt"
    path.write_text("0 0\n5 2\n")
    labels = np.array([0, 5, 9, 11])
    with pytest.raises(InputError, match=r"values 9, 11 have no entry.*'\* 0'"):
        sparse_table.remap(labels, read_label_mapping(path))
    path.write_text("0 0\n5 2\n* 0  # everything else is background\n")
    mapping = read_label_mapping(path)
    np.testing.assert_array_equal(sparse_table.remap(labels, mapping), [0, 2, 0, 0])


def test_unknown_values_say_how_to_map_them(sparse_table):
    with pytest.raises(InputError, match=r"--label-map FILE.*freesurfer_to_brain_mri"):
        sparse_table.check_values(np.array([0, 5]), "mask.nii.gz")
