"""Finding image/label pairs in the usual layouts, and loading a case onto a model grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medgen3d.datasets import CasePaths, case_from_file, discover_pairs, find_pairs, load_case
from medgen3d.errors import InputError
from medgen3d.labels import bundled_table
from medgen3d.preprocessing import Preprocessing

IMAGE = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
LABEL = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 3).astype(np.uint8)


@pytest.fixture
def write_pair(tmp_nifti):
    """``write_pair(image_name, label_name)`` writes a small matching pair under tmp_path."""

    def _write(image_name: str, label_name: str | None) -> tuple[Path, Path | None]:
        image = tmp_nifti(IMAGE, np.eye(4), image_name)
        label = None if label_name is None else tmp_nifti(LABEL, np.eye(4), label_name)
        return image, label

    return _write


def _as_tuples(pairs: list[CasePaths], root: Path) -> list[tuple[str, str, str]]:
    return [
        (p.name, p.image.relative_to(root).as_posix(), p.label.relative_to(root).as_posix())
        for p in pairs
    ]


def test_msd_layout(tmp_path, write_pair):
    root = tmp_path / "Task03_Liver"
    for case in ("liver_7", "liver_10", "liver_0"):
        write_pair(f"Task03_Liver/imagesTr/{case}.nii.gz", f"Task03_Liver/labelsTr/{case}.nii.gz")
    (root / "imagesTs").mkdir()  # test images without labels are not training pairs
    (root / "dataset.json").write_text("{}")
    assert _as_tuples(discover_pairs(root), root) == [
        ("liver_0", "imagesTr/liver_0.nii.gz", "labelsTr/liver_0.nii.gz"),
        ("liver_10", "imagesTr/liver_10.nii.gz", "labelsTr/liver_10.nii.gz"),
        ("liver_7", "imagesTr/liver_7.nii.gz", "labelsTr/liver_7.nii.gz"),
    ]


def test_msd_layout_with_four_digit_case_ids(tmp_path, write_pair):
    # "case_0001" looks like an nnU-Net channel suffix but is an MSD case with its own label.
    for case in ("case_0000", "case_0001", "case_0002"):
        write_pair(f"ds/imagesTr/{case}.nii.gz", f"ds/labelsTr/{case}.nii.gz")
    root = tmp_path / "ds"
    assert [p.name for p in discover_pairs(root)] == ["case_0000", "case_0001", "case_0002"]
    for pair in discover_pairs(root):
        assert pair.image.name == pair.label.name


def test_nnunet_layout_uses_channel_0000_only(tmp_path, write_pair):
    root = tmp_path / "Dataset001_Thorax"
    for case in ("thorax_002", "thorax_001"):
        write_pair(
            f"{root.name}/imagesTr/{case}_0000.nii.gz", f"{root.name}/labelsTr/{case}.nii.gz"
        )
        write_pair(f"{root.name}/imagesTr/{case}_0001.nii.gz", None)  # second modality
    # A temporary file left by an interrupted writer is hidden and ignored.
    (root / "imagesTr" / ".thorax_003_0000.nii.abc.part.nii.gz").write_bytes(b"partial")
    assert _as_tuples(discover_pairs(root), root) == [
        ("thorax_001", "imagesTr/thorax_001_0000.nii.gz", "labelsTr/thorax_001.nii.gz"),
        ("thorax_002", "imagesTr/thorax_002_0000.nii.gz", "labelsTr/thorax_002.nii.gz"),
    ]


def test_paired_files_layout(tmp_path, write_pair):
    write_pair("out/b_image.nii.gz", "out/b_label.nii.gz")
    write_pair("out/a_image.nii", "out/a_label.nii")
    write_pair("out/c_image.nii.gz", "out/c_label.nii")  # mixed suffixes are fine
    write_pair("out/a-1_image.nii.gz", "out/a-1_label.nii.gz")  # file order differs: "-" < "_"
    (tmp_path / "out" / "notes.txt").write_text("not an image")
    root = tmp_path / "out"
    assert _as_tuples(discover_pairs(root), root) == [
        ("a", "a_image.nii", "a_label.nii"),
        ("a-1", "a-1_image.nii.gz", "a-1_label.nii.gz"),
        ("b", "b_image.nii.gz", "b_label.nii.gz"),
        ("c", "c_image.nii.gz", "c_label.nii"),
    ]


def test_a_pair_is_found_from_either_file_or_its_sidecar(tmp_path, write_pair):
    image, label = write_pair("out/s_0001_image.nii.gz", "out/s_0001_label.nii")
    sidecar = tmp_path / "out" / "s_0001.json"
    sidecar.write_text("{}")
    for path in (image, label, sidecar):
        assert case_from_file(path) == CasePaths("s_0001", image, label)


def test_a_file_without_its_partner_is_named(tmp_path, write_pair):
    image, _ = write_pair("out/lonely_image.nii.gz", None)
    with pytest.raises(InputError, match=r"lonely_image\.nii\.gz.*lonely_label"):
        case_from_file(image)
    with pytest.raises(InputError, match="no such file"):
        case_from_file(tmp_path / "missing_image.nii.gz")


def test_find_pairs_mixes_folders_and_files_in_the_order_given(tmp_path, write_pair):
    write_pair("set/a_image.nii.gz", "set/a_label.nii.gz")
    write_pair("set/b_image.nii.gz", "set/b_label.nii.gz")
    single, _ = write_pair("other/z_image.nii.gz", "other/z_label.nii.gz")
    found = find_pairs([single, tmp_path / "set"])
    assert [case.name for case in found] == ["z", "a", "b"]


def test_case_folders_layout(tmp_path, write_pair):
    for case in ("patient_b", "patient_a"):
        write_pair(f"cases/{case}/image.nii.gz", f"cases/{case}/label.nii.gz")
    (tmp_path / "cases" / "empty_folder").mkdir()
    root = tmp_path / "cases"
    assert _as_tuples(discover_pairs(root), root) == [
        ("patient_a", "patient_a/image.nii.gz", "patient_a/label.nii.gz"),
        ("patient_b", "patient_b/image.nii.gz", "patient_b/label.nii.gz"),
    ]


def test_a_single_case_folder(tmp_path, write_pair):
    image, label = write_pair("ct_one/image.nii.gz", "ct_one/label.nii")
    pairs = discover_pairs(tmp_path / "ct_one")
    assert pairs == [CasePaths("ct_one", image, label)]


@pytest.mark.parametrize(
    ("image_name", "other_files"),
    [
        (
            "msd/imagesTr/lung_002.nii.gz",
            ["msd/imagesTr/lung_001.nii.gz", "msd/labelsTr/lung_001.nii.gz"],
        ),
        ("nnunet/imagesTr/lung_002_0000.nii.gz", ["nnunet/labelsTr/lung_001.nii.gz"]),
        ("paired/x_image.nii.gz", ["paired/y_image.nii.gz", "paired/y_label.nii.gz"]),
        (
            "folders/case_2/image.nii.gz",
            ["folders/case_1/image.nii.gz", "folders/case_1/label.nii.gz"],
        ),
        ("single/image.nii.gz", []),
    ],
)
def test_missing_label_names_the_image(tmp_path, write_pair, image_name, other_files):
    image, _ = write_pair(image_name, None)
    for name in other_files:
        write_pair(name, None)
    root = tmp_path / image_name.split("/")[0]
    with pytest.raises(InputError) as excinfo:
        discover_pairs(root)
    assert excinfo.value.path == image
    assert image.name in str(excinfo.value)
    assert "label" in str(excinfo.value)


def test_empty_folder_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError) as excinfo:
        discover_pairs(tmp_path / "empty")
    assert excinfo.value.path == tmp_path / "empty"
    assert "no image/label pairs" in str(excinfo.value)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(InputError) as excinfo:
        discover_pairs(tmp_path / "absent")
    assert "absent" in str(excinfo.value)
    with pytest.raises(InputError):
        discover_pairs(tmp_path / "file.nii.gz")  # a file is not a folder either


def test_load_case_on_a_synthetic_pair(tmp_path, write_pair):
    image, label = write_pair("one/image.nii.gz", "one/label.nii.gz")
    table = bundled_table("thorax_phantom")
    img, lab = load_case(CasePaths("one", image, label), table, Preprocessing(size=(8, 8)))
    assert img.shape == lab.shape == (6, 8, 8)
    np.testing.assert_array_equal(img.affine, lab.affine)
    mapped_img, mapped = load_case(
        CasePaths("one", image, label), table, Preprocessing(), {0: 0, 1: 8, 2: 4}
    )
    np.testing.assert_array_equal(mapped.data, np.array([0, 8, 4])[LABEL.transpose(2, 1, 0)])
    assert mapped_img.data.dtype == np.float32


# ---- real data ------------------------------------------------------------------------------

# ct_thorax/labels.txt -> bundled thorax_phantom table; great-vessel branches become background.
CT_THORAX_TO_PHANTOM = {
    0: 0,
    1: 4,  # heart
    2: 5,  # aorta
    3: 0,  # pulmonary artery
    4: 0,  # brachiocephalic trunk
    5: 0,  # left common carotid
    6: 0,  # left subclavian
    7: 0,  # celiac trunk
    8: 0,  # superior mesenteric artery
    9: 8,  # vertebra T12 -> spine
    10: 3,  # left lung
    11: 2,  # right lung
    12: 6,  # trachea and main bronchi
}


def _centroid(volume, value: int) -> np.ndarray:
    z, y, x = np.nonzero(volume.data == value)
    return (volume.affine @ [x.mean(), y.mean(), z.mean(), 1.0])[:3]


def test_load_real_ct_thorax_onto_the_phantom_table(real_case):
    case = real_case("ct_thorax")
    table = bundled_table("thorax_phantom")
    preprocessing = Preprocessing(spacing=(3.0, 6.0, 6.0), size=(64, 64))

    image, label = load_case(case, table, preprocessing, CT_THORAX_TO_PHANTOM)

    assert image.shape == label.shape
    assert image.shape[1:] == (64, 64)
    np.testing.assert_array_equal(image.affine, label.affine)
    np.testing.assert_allclose(image.spacing, (3.0, 6.0, 6.0), rtol=1e-5)
    assert image.data.min() >= -1.0
    assert image.data.max() <= 1.0
    assert set(np.unique(label.data).tolist()) == {0, 2, 3, 4, 5, 6, 8}
    assert set(np.unique(label.data).tolist()) <= set(table.values)
    assert image.source_axcodes == label.source_axcodes == ("L", "P", "S")
    # Anatomy lands on the right side of the RAS world: +x is the patient's right,
    # +y anterior, +z superior.
    heart, spine = _centroid(label, table.value_of("heart")), _centroid(label, 8)
    right, left = _centroid(label, table.value_of("right_lung")), _centroid(label, 3)
    assert right[0] > left[0] + 50
    assert heart[1] > spine[1] + 30
    assert heart[0] < right[0]  # the heart leans to the patient's left
    trachea = _centroid(label, table.value_of("trachea"))
    assert trachea[2] > heart[2]
    # The lungs are air: dark in the CT window.
    assert image.data[label.data == 2].mean() < -0.5
    assert image.data[label.data == 4].mean() > -0.2


def test_load_real_ct_thorax_without_mapping_names_unknown_values(real_case):
    case = real_case("ct_thorax")
    table = bundled_table("thorax_phantom")
    with pytest.raises(InputError) as excinfo:
        load_case(case, table, Preprocessing(spacing=(3.0, 6.0, 6.0), size=(64, 64)))
    assert excinfo.value.path == case.label
    message = str(excinfo.value)
    assert "label.nii.gz" in message
    assert "9, 10, 11, 12" in message


def test_load_real_ct_thorax_with_an_incomplete_mapping(real_case):
    case = real_case("ct_thorax")
    mapping = {k: v for k, v in CT_THORAX_TO_PHANTOM.items() if k != 12}
    with pytest.raises(InputError) as excinfo:
        load_case(case, bundled_table("thorax_phantom"), Preprocessing(), mapping)
    assert excinfo.value.path == case.label
    assert "12" in str(excinfo.value)
