"""Presets, profiles and overrides: precedence and error messages."""

from __future__ import annotations

import pytest

from dragsaw.config import apply_overrides, available_presets, config_from_dict, config_to_dict, load_preset
from dragsaw.errors import ConfigError


def test_every_preset_loads_with_and_without_cpu_profile():
    names = available_presets()
    assert {"isic2016", "isic2017", "ph2", "isic2016-ph2", "montgomery", "digestpath", "folder", "msd-brain",
            "msd-heart", "msd-prostate", "decathlon"} <= set(names)
    for name in names:
        paper = load_preset(name)
        cpu = load_preset(name, "cpu")
        if paper.model.spatial_dims == 2:
            assert paper.model.name == "deeplabv3plus" and paper.model.options == {"backbone": "xception"}
            assert cpu.model.name == "unet" and "backbone" not in cpu.model.options  # options replaced whole
            assert paper.train.lr == 1e-3 and paper.train.epochs == 300
            assert paper.pdcr.encoder_weight == 0.1 and paper.pdcr.temperature == 1.0
        else:  # the 3D reference: DynUNet, T = 0.5, weights 0.01 / 0.01, 5-fold CV, Dice + CE
            assert paper.model.name == cpu.model.name == "dynunet" and paper.data.fold == 0
            assert paper.pdcr.temperature == 0.5 and paper.pdcr.encoder_weight == paper.pdcr.cross_weight == 0.01
            assert paper.train.dice_weight == 1.0 and cpu.model.options["base_filters"] == 8
        assert paper.pdcr.patch_sizes == [5, 7, 9]


def test_3d_presets_carry_class_names_and_regions():
    brain = load_preset("msd-brain")
    assert brain.data.num_classes == 4 and brain.data.class_names == ["background", "ED", "NE", "EN"]
    assert brain.data.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert load_preset("msd-prostate").data.class_names == ["background", "PZ", "TZ"]
    assert load_preset("msd-heart").data.class_names == ["background", "LA"]


def test_paper_input_sizes():
    assert load_preset("isic2016").data.input_size == [512, 512]
    assert load_preset("isic2017").data.input_size == [384, 512]  # (H, W) for the paper's 512x384 (W x H)
    assert load_preset("isic2016-ph2").data.dataset == "isic2016_ph2"


def test_overrides_take_precedence_and_parse_yaml():
    config = apply_overrides(load_preset("montgomery", "cpu"), [
        "train.epochs=3", "pdcr.enabled=false", "data.input_size=[64, 96]", "model.options.channels=[4, 8, 16]",
    ])
    assert config.train.epochs == 3 and config.pdcr.enabled is False
    assert config.data.input_size == [64, 96] and config.model.options["channels"] == [4, 8, 16]
    assert config_from_dict(config_to_dict(config)) == config  # round trip


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: load_preset("isci2016"), r"unknown preset 'isci2016'. Did you mean 'isic2016'\?.*Available presets"),
        (lambda: load_preset("isic2016", "gpu"), "has no profile 'gpu'"),
        (lambda: apply_overrides(load_preset("folder"), ["train.epoch=3"]), r"train.'epoch'. Did you mean 'epochs'\?"),
        (lambda: apply_overrides(load_preset("folder"), ["epochs"]), "must look like section.key=value"),
        (lambda: load_preset("/nonexistent/x.yaml"), "does not exist"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["uafs.init_scale=0"], r"uafs.init_scale must be a finite number > 0, got 0.*saddle point"),
        (["uafs.init_scale=-0.01"], r"uafs.init_scale must be a finite number > 0, got -0.01"),
        (["uafs.init_scale=.inf"], r"uafs.init_scale must be a finite number > 0, got inf"),
        (["uafs.init_scale=true"], r"uafs.init_scale must be of type"),
        (["uafs.aux_weight=-1"], r"uafs.aux_weight must be a finite number >= 0 \(0 = off\), got -1"),
        (["uafs.aux_weight=.nan"], r"uafs.aux_weight must be a finite number >= 0"),
        (["data.num_classes=3", "uafs.aux_weight=0.1"],
         r"uafs.branches must equal data.num_classes=3, got uafs.branches=2; set uafs.branches=3"),
    ],
)
def test_uafs_option_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(load_preset("folder"), overrides)


def test_uafs_options_defaults_and_valid_values():
    config = load_preset("folder")
    assert config.uafs.init_scale == 1.0 and config.uafs.aux_weight == 0.0  # the paper's form by default
    ok = apply_overrides(config, ["data.num_classes=3", "uafs.branches=3", "uafs.aux_weight=0.1", "uafs.init_scale=0.01"])
    assert (ok.uafs.aux_weight, ok.uafs.init_scale) == (0.1, 0.01)
    # without UAFS the auxiliary weight has nothing to supervise, so the head width is not checked
    assert apply_overrides(config, ["data.num_classes=3", "uafs.enabled=false", "uafs.aux_weight=0.1"]).uafs.enabled is False


def test_overrides_follow_omegaconf_conversions_and_paths():
    """OmegaConf converts unambiguous text and numbers to the key's type, and a list's entries have paths."""
    config = apply_overrides(load_preset("folder"), ["train.precision=32", "name=5", "train.lr=1e-3", "train.epochs='7'",
                                                     "data.input_size.0=256", "model.options={channels: [4, 8]}"])
    assert (config.train.precision, config.name, config.train.lr, config.train.epochs) == ("32", "5", 1e-3, 7)
    assert config.data.input_size == [256, 512] and config.model.options == {"channels": [4, 8]}  # replaced whole
    assert apply_overrides(config, ["model.options.depth=3"]).model.options == {"channels": [4, 8], "depth": 3}


def test_pdcr_ramp_and_embedding_defaults_are_the_papers_form():
    config = load_preset("folder")
    assert config.pdcr.ramp_epochs == 0.0 and config.pdcr.embedding == "feature"
    ok = apply_overrides(config, ["pdcr.ramp_epochs=2.5", "pdcr.embedding=mlp"])
    assert ok.pdcr.ramp_epochs == 2.5 and ok.pdcr.embedding == "mlp"


@pytest.mark.parametrize(
    "override,match",
    [
        ("train=5", r"train must be a mapping of its keys .*got 5 \(an int\)"),
        ("data=[1, 2]", r"data must be a mapping of its keys"),
        ("pdcr.temperature=0", r"pdcr.temperature must be a finite number > 0, got 0"),
        ("train.precision=banana", r"train.precision must be one of \['32-true', '32', '16-mixed'"),
        ("train.precision=33", r"train.precision must be one of .*got '33' \(a str\)"),  # 33 read as text
        ("train.accelerator=tpu", r"train.accelerator must be one of \['auto', 'cpu', 'gpu', 'cuda', 'mps'\]"),
        ("pdcr.sampling=everywhere", r"pdcr.sampling must be one of \['grid', 'random'\]"),
        ("pdcr.orientation=up", r"pdcr.orientation must be one of \['intended', 'reference-2d'\]"),
        ("pdcr.encoder_samples=[]", r"pdcr.encoder_samples must not be an empty list"),
        ("pdcr.encoder_samples=[0, 8]", r"every entry of pdcr.encoder_samples must be a finite number in \[1, 4096\]"),
        ("pdcr.patch_sizes=rf", r"pdcr.patch_sizes must be a list of patch lengths .*RF-PDCR"),
        ("pdcr.cross_layers=[[a]]", r"pdcr.cross_layers must be a pair of two different layer names"),
        ("pdcr.layers={encoder.1: middle}", r"pdcr.layers\['encoder.1'\] must be one of \['encoder', 'decoder'\]"),
        ("train.seed=-1", r"train.seed must be a finite number in \[0, 4294967295\], got -1"),
        ("train.lr=.nan", r"train.lr must be a finite number in \(0, 1e\+06\], got nan"),
        ("train.lr=-.inf", r"train.lr must be a finite number in \(0, 1e\+06\], got -inf"),
        ("train.warmup_epochs=1.0e+300", r"train.warmup_epochs must be a finite number in \[0, 1e\+06\]"),
        ("train.limit_val_batches=0", r"train.limit_val_batches must be an int >= 1 .*or a float in \(0, 1\]"),
        ("train.class_weights=[1.0]", r"train.class_weights must hold one entry per class \(data.num_classes=2\)"),
        ("train.class_weights=[0, 0]", r"train.class_weights must have at least one weight > 0"),
        ("data.num_classes=1", r"data.num_classes must be a finite number in \[2, 1024\] \(background included\), got 1"),
        ("data.class_names=[lesion]", r"data.class_names must hold one entry per class"),
        ("data.fold=5", r"data.fold must be in 0..4 for data.folds=5"),
        ("data.regions={wt: [7]}", r"data.regions\['wt'\] must be a non-empty list of class indices in 0..1"),
        ("data.input_size.x=3", r"data.input_size holds \[512, 512\] \(a list\), which has no entry 'x'"),
        ("data.input_size.2=3", r"data.input_size holds \[512, 512\] \(a list\), which has no entry '2'"),
        ("data.value_map={1: x}", r"data.value_map must be of type .* where data.value_map.1 is 'x' \(a str\)"),
        ("data.value_map={1: x}", r"data.value_map must be of type dict\[int, int\] \| null"),
        ("model.options={dropout: .nan}", r"model.options.dropout must be a finite number"),
        ("model.spatial_dims=4", r"model.spatial_dims must be a finite number in \[2, 3\]"),
        ("uafs.hidden=100000", r"uafs.hidden must be a finite number in \[1, 4096\]"),
        ("name=''", r"name must be a non-empty str"),
        ("name=[5]", r"name must be of type str, got \[5\] \(a list\)"),
        ("pdcr.ramp_epochs=-1", r"pdcr.ramp_epochs must be a finite number >= 0 .*got -1"),
        ("pdcr.ramp_epochs=.nan", r"pdcr.ramp_epochs must be a finite number >= 0 .*got nan"),
        ("pdcr.ramp_epochs=two", r"pdcr.ramp_epochs must be of type .*float.*got 'two'"),
        ("pdcr.embedding=projection", r"pdcr.embedding must be one of \['feature', 'mlp'\], got 'projection'"),
    ],
)
def test_every_value_is_checked_against_its_schema(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(load_preset("folder"), [override])


@pytest.mark.parametrize(
    "text,match",
    [
        ("hello", r"must be a YAML mapping of sections .*got 'hello' \(a str\)"),
        ("- 1\n- 2\n", r"must be a YAML mapping of sections .*\(a list\)"),
        ("data: 5\n", r"data must be a mapping of its keys .*got 5"),
        ("profiles: 5\n", r"profiles must map profile names to mappings"),
        ("train: {lr: .inf}\n", r"train.lr must be a finite number in \(0, 1e\+06\], got inf"),
    ],
)
def test_preset_documents_of_the_wrong_shape_are_config_errors(text, match, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_preset(str(preset))


def test_config_yaml_of_the_wrong_shape_or_encoding_is_a_config_error(tmp_path):
    from dragsaw.engine.run import resume_config

    for raw in ("hello", [1, 2], 5):
        with pytest.raises(ConfigError, match="must be a mapping of sections"):
            config_from_dict(raw, where="in x: ")
    (tmp_path / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"config.yaml is not valid YAML"):
        resume_config(tmp_path)
    (tmp_path / "p.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"cannot read preset file"):
        load_preset(str(tmp_path / "p.yaml"))


def test_omegaconf_missing_marker_is_refused_not_ignored():
    config = load_preset("folder", "cpu")
    with pytest.raises(ConfigError, match=r"override 'train.lr=\?\?\?': '\?\?\?' is not a value; give the value of "
                                          r"train.lr\."):
        apply_overrides(config, ["train.lr=???"])
    raw = config_to_dict(config)
    raw["train"]["lr"] = "???"
    with pytest.raises(ConfigError, match=r"train.lr hold '\?\?\?', which is not a value"):
        config_from_dict(raw)
