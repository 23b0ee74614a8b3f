"""The readers: the one place 2D and 3D differ (reading, preprocessing, what maps back to the file's geometry)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from dragsaw.config import apply_overrides, load_preset
from dragsaw.data import ImageReader, SegmentationDataset, VolumeReader, decathlon, to_original_geometry
from dragsaw.data.cases import Case
from dragsaw.errors import ConfigError
from dragsaw.plan import Plan

from ._volumes3d import write_task


def test_image_reader_read_input_is_the_evaluation_item(tmp_path, files):
    path = files.save(tmp_path / "x.png", files.rgb(30, 20, 3))
    reader = ImageReader((16, 12), mean=[0.5], std=[0.25])
    got = reader.read_input(path)
    assert got["meta"] == {"shape": (30, 20), "path": str(path)} and got["image"].shape == (3, 16, 12)
    item = SegmentationDataset([Case("x", path, None)], reader, train=False, cache=False)[0]
    torch.testing.assert_close(got["image"], item["image"], rtol=0, atol=0)
    # at the file's own size nothing is resampled: the input is exactly (x / 255 - 0.5) / 0.25, per channel
    same = ImageReader((30, 20), mean=[0.5], std=[0.25]).read_input(path)["image"].double()
    ref = (torch.from_numpy(files.rgb(30, 20, 3).transpose(2, 0, 1)).double() / 255.0 - 0.5) / 0.25
    torch.testing.assert_close(same, ref, rtol=0, atol=1e-6)


def test_volume_reader_maps_back_to_the_files_geometry(tmp_path):
    cases = decathlon(write_task(tmp_path / "T", n_train=1))["train"]
    reader = VolumeReader((2.0, 2.0, 3.0), None, (8, 8, 8), num_classes=3)
    assert reader.check(cases) == 2 and reader.modalities == ("MRI-A", "MRI-B")
    item = reader.read(cases[0], native=True)
    header = nib.load(str(cases[0].mask))
    assert item["meta"]["shape"] == header.shape[:3] and item["label_native"].shape == header.shape[:3]
    np.testing.assert_array_equal(item["label_native"].numpy(), np.asarray(header.dataobj).astype(np.int64))
    # the preprocessed label, mapped back with the meta, is the native label wherever resampling is exact
    back = to_original_geometry(item["label"].numpy(), item["meta"])
    assert back.shape == header.shape[:3]
    agree = (back == item["label_native"].numpy()).mean()
    assert agree > 0.9, agree
    inputs = reader.read_input(cases[0].image)
    torch.testing.assert_close(inputs["image"], item["image"], rtol=0, atol=0)


def test_volume_reader_refuses_intensity_shifts():
    with pytest.raises(ConfigError, match=r"intensity shifts \('gamma-2'\) are applied to 2D images only"):
        VolumeReader((1.0, 1.0, 1.0), ["CT"], (8, 8, 8), num_classes=2, image_shift="gamma-2")


def test_plan_chooses_the_reader_and_passes_its_values(tmp_path):
    image_plan = Plan.from_config(apply_overrides(load_preset("folder", "cpu"), ["data.input_size=[40, 48]"]),
                                  in_channels=1)
    reader = image_plan.reader(value_map={0: 0, 255: 1}, image_shift="gamma-0.5")
    assert isinstance(reader, ImageReader) and reader.input_size == (40, 48) and reader.stackable
    assert reader.normalization == image_plan.normalization and reader.image_shift == "gamma-0.5"
    assert reader.value_map == {0: 0, 255: 1}
    config = apply_overrides(load_preset("decathlon", "cpu"), ["data.target_spacing=[1.5, 1.0, 2.5]",
                                                               "data.modalities=[CT]", "data.input_size=[16, 16, 8]"])
    volume_plan = Plan.from_config(config)
    reader = volume_plan.reader()
    assert isinstance(reader, VolumeReader) and not reader.stackable
    assert reader.target_spacing == (1.5, 1.0, 2.5) and reader.modalities == ("CT",) and reader.input_size == (16, 16, 8)
