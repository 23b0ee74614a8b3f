"""Volume formats besides NIfTI: the format table, NRRD and DICOM series against their NIfTI twins, errors, and the
MetaImage path (read only where itk imports)."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import Orientationd

import dragsaw.data.io.formats as formats
from dragsaw.data.cases import Case
from dragsaw.data.io.formats import DICOM, METAIMAGE, NIFTI, NRRD, VOLUME_FORMATS, volume_format, volume_stem
from dragsaw.data.io.volumes import LoadVolumed, case_to_dict, check_case_geometry, read_header, read_voxels
from dragsaw.errors import DataError

from .._formats3d import nifti, write_dicom_series, write_nrrd
from .._volumes3d import make_affine, make_volume

SHAPE = (12, 10, 6)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 image and a uint8 label ``[X, Y, Z]``."""
    image, label = make_volume(SHAPE, channels=1, seed=seed)
    return np.rint(image[..., 0]).astype(np.int16), label


def _same(a_path, b_path, label_a=None, label_b=None) -> None:
    """``a`` and ``b`` read alike: headers (float64, 1e-6), loaded arrays (exactly) and RAS-reoriented arrays."""
    ha, hb = read_header(a_path), read_header(b_path)
    assert ha.shape == hb.shape and ha.channels == hb.channels == 1
    np.testing.assert_allclose(ha.affine, hb.affine, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ha.spacing, hb.spacing, rtol=0, atol=1e-6)
    load = LoadVolumed(num_classes=3, keep_native=True)
    da = load({"image": str(a_path), **({"label": str(label_a)} if label_a else {})})
    db = load({"image": str(b_path), **({"label": str(label_b)} if label_b else {})})
    np.testing.assert_array_equal(da["image"].numpy(), db["image"].numpy())
    np.testing.assert_allclose(da["meta"]["affine"], db["meta"]["affine"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(da["meta"]["affine"], ha.affine, rtol=0, atol=1e-6)  # header == loader
    assert da["meta"]["shape"] == ha.shape
    keys = ["image", "label"] if label_a else ["image"]
    ras = Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))  # as dragsaw
    ra, rb = (ras(dict(d)) for d in (da, db))
    for key in keys:
        np.testing.assert_array_equal(ra[key].numpy(), rb[key].numpy())
        np.testing.assert_allclose(np.asarray(ra[key].affine), np.asarray(rb[key].affine), rtol=0, atol=1e-6)
    if label_a:
        np.testing.assert_array_equal(da["native_label"].numpy(), db["native_label"].numpy())


# ------------------------------------------------------------------ the table and the path rule
def test_table_and_path_rule(tmp_path):
    assert [f.name for f in VOLUME_FORMATS] == ["NIfTI", "NRRD", "DICOM series", "MetaImage"]
    assert [f.reader for f in VOLUME_FORMATS] == ["NibabelReader", "NrrdReader", "PydicomReader", "ITKReader"]
    assert NIFTI.extra is None and (NRRD.extra, DICOM.extra, METAIMAGE.extra) == ("formats", "formats", "itk")
    for name, fmt, stem in [("a.nii.gz", NIFTI, "a"), ("B.NII", NIFTI, "B"), ("c.nrrd", NRRD, "c"),
                            ("c.nhdr", NRRD, "c"), ("d.mha", METAIMAGE, "d"), ("d.MHD", METAIMAGE, "d")]:
        assert volume_format(tmp_path / name, check_reader=False) is fmt
        assert volume_stem(tmp_path / name) == stem
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "x.dcm").write_bytes(b"x")
    assert volume_format(tmp_path / "series", check_reader=False) is DICOM
    assert volume_stem(tmp_path / "series") == "series"
    assert volume_stem(tmp_path / "a.png") is None and volume_stem(tmp_path / ".nii") is None


def test_unknown_suffix_and_single_slice_errors(tmp_path):
    with pytest.raises(DataError) as err:
        volume_format(tmp_path / "v.vtk", "label")
    text = str(err.value)
    assert "label file" in text and "v.vtk" in text and "not a NIfTI file" in text
    for listed in (".nrrd", ".nhdr", "a folder of .dcm files", ".mha", ".mhd"):
        assert listed in text
    (tmp_path / "one.dcm").write_bytes(b"x")
    with pytest.raises(DataError, match="one DICOM slice") as err:
        volume_format(tmp_path / "one.dcm")
    assert err.value.fix.startswith(f"give the folder {tmp_path}")


@pytest.mark.parametrize("fmt", [NRRD, DICOM, METAIMAGE])
def test_missing_package_names_it_and_the_extra(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(formats, "module_available", lambda module: module != fmt.module)
    path = tmp_path / {"NRRD": "v.nrrd", "MetaImage": "v.mha"}.get(fmt.name, "series")
    if fmt is DICOM:
        path.mkdir()
        (path / "s.dcm").write_bytes(b"x")
    else:
        path.write_bytes(b"x")
    for call in (lambda: read_header(path), lambda: LoadVolumed()({"image": str(path)})):
        with pytest.raises(DataError) as err:
            call()
        assert str(path) in str(err.value) and repr(fmt.package) in str(err.value) and fmt.reader in str(err.value)
        assert err.value.fix == f"pip install 'dragsaw[{fmt.extra}]'"


def test_metaimage_without_itk_is_a_clear_error(tmp_path):
    if formats.module_available("itk"):
        pytest.skip("itk is installed")
    path = tmp_path / "v.mha"
    path.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(DataError, match="needs the Python package 'itk'") as err:
        read_header(path)
    assert err.value.fix == "pip install 'dragsaw[itk]'"


# ------------------------------------------------------------------ NRRD
@pytest.mark.parametrize("options", [{}, {"compression_level": 0}], ids=["gzip", "raw"])
def test_nrrd_matches_its_nifti_twin(tmp_path, options):
    pytest.importorskip("nrrd")
    image, label = _data()
    affine = make_affine((1.5, 1.0, 2.5), rot_deg=11.0, origin=(10.0, -20.0, 5.0))  # non-identity, LPS-like
    a = write_nrrd(tmp_path / "v.nrrd", image, affine, **options)
    la = write_nrrd(tmp_path / "v_label.nrrd", label, affine, **options)
    b, lb = nifti(tmp_path / "v.nii.gz", image, affine), nifti(tmp_path / "v_label.nii.gz", label, affine)
    _same(a, b, la, lb)
    head = read_header(a)
    assert head.format == "NRRD" and head.shape == SHAPE
    np.testing.assert_allclose(head.affine, affine, rtol=0, atol=1e-6)
    np.testing.assert_allclose(head.spacing, (1.5, 1.0, 2.5), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(read_voxels(la, "label"), label)


def test_nrrd_detached_header(tmp_path):
    pytest.importorskip("nrrd")
    image, _ = _data(1)
    affine = make_affine((0.8, 0.9, 3.0), rot_deg=-20.0, lps=False)
    a = write_nrrd(tmp_path / "v.nhdr", image, affine, detached_header=True)
    b = nifti(tmp_path / "v.nii.gz", image, affine)
    _same(a, b)
    for data in tmp_path.glob("v.raw*"):  # the detached data file gone: the header names it
        data.unlink()
        with pytest.raises(DataError, match="names the data file .*does not exist"):
            read_header(a)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "2d", "space", "ras"])
def test_nrrd_errors(tmp_path, kind):
    pytest.importorskip("nrrd")
    image, _ = _data()
    path = tmp_path / "v.nrrd"
    if kind == "garbage":
        path.write_text("<html>404</html>\n")
    elif kind == "truncated":
        write_nrrd(path, image, make_affine(), compression_level=0)
        path.write_bytes(path.read_bytes()[:-200])
    elif kind == "2d":
        import nrrd

        nrrd.write(str(path), image[:, :, 0])
    else:
        space = "left-anterior-superior" if kind == "space" else "right-anterior-superior"
        write_nrrd(path, image, make_affine(), space=space)
    if kind == "truncated":  # the header reads; loading fails, naming the file
        read_header(path)
        with pytest.raises(DataError, match="cannot be loaded") as err:
            LoadVolumed()({"image": str(path)})
        assert str(path) in str(err.value) and "complete NRRD volumes" in err.value.fix
        return
    pattern = {"garbage": "cannot be read as NRRD", "2d": "dragsaw reads 3D NRRD volumes",
               "space": "NRRD space 'left-anterior-superior'", "ras": "NRRD space 'right-anterior-superior'"}[kind]
    with pytest.raises(DataError, match=pattern) as err:
        read_header(path)
    assert str(path) in str(err.value) and err.value.fix


# ------------------------------------------------------------------ DICOM
def test_dicom_series_matches_its_nifti_twin(tmp_path):
    pytest.importorskip("pydicom")
    image, label = _data(2)
    folder, affine = write_dicom_series(tmp_path / "ct", image, make_affine((0.7, 0.8, 2.0), rot_deg=15.0))
    twin = nifti(tmp_path / "ct.nii.gz", image, affine)
    lab = nifti(tmp_path / "ct_label.nii.gz", label, affine)  # a NIfTI label on the series' grid
    _same(folder, twin, lab, lab)
    head = read_header(folder)
    assert head.format == "DICOM series" and head.shape == SHAPE and head.path == folder
    np.testing.assert_allclose(head.spacing, (0.7, 0.8, 2.0), rtol=0, atol=1e-5)
    case = Case("ct", folder, lab)
    assert check_case_geometry(case).shape == SHAPE
    assert case_to_dict(case)["image"] == str(folder)


def test_dicom_instance_numbers_decide_the_slice_order(tmp_path):
    pytest.importorskip("pydicom")
    image, _ = _data(3)
    folder, affine = write_dicom_series(tmp_path / "s", image, make_affine(), first_number=40)
    for path in sorted(folder.glob("*.dcm")):  # file names in reverse order: InstanceNumber decides
        path.rename(folder / f"z{99 - int(path.stem[-3:]):03d}.dcm")
    _same(folder, nifti(tmp_path / "s.nii.gz", image, affine))


@pytest.mark.parametrize("kind", ["mixed", "missing", "one_slice", "not_dicom", "no_position"])
def test_dicom_series_errors(tmp_path, kind):
    pydicom = pytest.importorskip("pydicom")
    image, _ = _data()
    folder = tmp_path / "s"
    if kind == "mixed":
        write_dicom_series(folder, image[:, :, :3], make_affine())
        write_dicom_series(folder, image[:, :, 3:], make_affine(), first_number=4, prefix="other")
    elif kind == "missing":
        write_dicom_series(folder, image, make_affine(), skip=(2,))
    elif kind == "one_slice":
        write_dicom_series(folder, image[:, :, :1], make_affine())
    elif kind == "not_dicom":
        write_dicom_series(folder, image, make_affine())
        (folder / "slice_001.dcm").write_text("not dicom")
    else:
        write_dicom_series(folder, image, make_affine())
        ds = pydicom.dcmread(str(folder / "slice_003.dcm"))
        del ds.ImagePositionPatient
        ds.save_as(str(folder / "slice_003.dcm"))
    pattern = {"mixed": "mixes 2 DICOM series", "missing": "not evenly spaced", "one_slice": "at least 2",
               "not_dicom": "slice slice_001.dcm cannot be read as DICOM",
               "no_position": "slice slice_003.dcm has no ImagePositionPatient"}[kind]
    for call in (lambda: read_header(folder), lambda: LoadVolumed()({"image": str(folder)})):
        with pytest.raises(DataError, match=pattern) as err:
            call()
        assert str(folder) in str(err.value) and err.value.fix


# ------------------------------------------------------------------ shapes, MetaImage
def test_image_label_shape_mismatch_names_the_files(tmp_path):
    pytest.importorskip("nrrd")
    image, label = _data()
    img = write_nrrd(tmp_path / "v.nrrd", image, make_affine())
    lab = write_nrrd(tmp_path / "v_label.nrrd", label[:, :, :-1], make_affine())
    with pytest.raises(DataError, match="label") as err:
        check_case_geometry(Case("v", img, lab))
    assert str(lab) in str(err.value) and str(img) in str(err.value)
    with pytest.raises(DataError, match="has shape") as err:
        LoadVolumed(num_classes=3)({"image": str(img), "label": str(lab)})
    assert str(lab) in str(err.value)


def test_channel_files_of_mixed_formats_are_refused(tmp_path):
    pytest.importorskip("nrrd")
    image, _ = _data()
    a = write_nrrd(tmp_path / "c_0000.nrrd", image, make_affine())
    b = nifti(tmp_path / "c_0001.nii.gz", image, make_affine())
    with pytest.raises(DataError, match="mix the formats"):
        LoadVolumed()({"image": [str(a), str(b)]})


def test_metaimage_matches_its_nifti_twin(tmp_path):
    itk = pytest.importorskip("itk")
    image, _ = _data(4)
    affine = make_affine((1.2, 0.9, 2.0), rot_deg=9.0)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    img = itk.image_from_array(np.ascontiguousarray(image.T))  # ITK arrays are [Z, Y, X]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    path = tmp_path / "v.mha"
    itk.imwrite(img, str(path))
    _same(path, nifti(tmp_path / "v.nii.gz", image, affine))

