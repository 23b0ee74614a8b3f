"""nnU-Net v2 trainers with PDCR and UAFS (METHOD.md section 0, the 3D U-Net placement).

* UAFS after every decoder stage (``decoder.stages.<s>``, inserted with :func:`dragsaw.taps.insert_after`, so before
  that stage's deep-supervision head and the next upsampling; also active at inference);
* PDCR on the 3rd and 4th encoder skips (the outputs of ``encoder.stages.2`` and ``encoder.stages.3``, tapped with
  :class:`dragsaw.taps.FeatureTaps`) plus the cross-layer term between them, with the 3D recipe: weights 0.01
  (in-layer, each skip) and 0.01 (cross-layer), T = 0.5, 64 grid samples per layer, H-PDCR patch lengths 5, 7, 9,
  computed from the full-resolution training labels and added to nnU-Net's loss (deep supervision and the
  AMP/grad-scaler path unchanged).

Trainers (pass the name to ``nnUNetv2_train ... -tr NAME`` and ``nnUNetv2_predict ... -tr NAME``):

* :class:`nnUNetTrainerDragsaw`: PDCR + UAFS;
* :class:`nnUNetTrainerDragsaw_PDCR`: PDCR only (the network is nnU-Net's own);
* :class:`nnUNetTrainerDragsaw_UAFS`: UAFS only;
* :class:`nnUNetTrainerDragsaw_5it`: PDCR + UAFS, 1 epoch of 5 iterations and 1 validation iteration (smoke tests).

nnU-Net finds trainers outside its own package through the ``nnUNet_extTrainer`` environment variable (nnunetv2 >=
2.8): ``export nnUNet_extTrainer="$(python -m dragsaw.integrations.nnunet path)"``. See docs/nnunet.md.

The helpers :func:`insert_uafs`, :func:`encoder_taps` and :func:`build_pdcr` wire any dynamic_network_architectures
U-Net (``PlainConvUNet``, ``ResidualEncoderUNet``) the same way outside a trainer.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import autocast, nn

try:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.helpers import dummy_context
except ImportError as exc:
    raise ImportError(
        f"dragsaw.integrations.nnunet needs nnU-Net v2 (nnunetv2), which could not be imported: {exc}. "
        "Install it with `pip install dragsaw[nnunet]`."
    ) from exc

from .._atomic import atomic_file
from ..pdcr import PatchDragsawLoss
from ..pdcr.sampling import auto_border
from ..taps import FeatureTaps, insert_after
from ..uafs import UncertaintySelect

__all__ = [
    "build_pdcr",
    "decoder_points",
    "default_tap_stages",
    "encoder_taps",
    "insert_uafs",
    "nnUNetTrainerDragsaw",
    "nnUNetTrainerDragsaw_5it",
    "nnUNetTrainerDragsaw_PDCR",
    "nnUNetTrainerDragsaw_UAFS",
    "trainer_path",
    "unwrap",
]

TRAINER_NAMES = ("nnUNetTrainerDragsaw", "nnUNetTrainerDragsaw_PDCR", "nnUNetTrainerDragsaw_UAFS",
                 "nnUNetTrainerDragsaw_5it")


def trainer_path() -> str:
    """The folder to list in ``nnUNet_extTrainer`` (it holds one shim module re-exporting the trainers)."""
    return str(Path(__file__).resolve().with_name("nnunet_trainers"))


# ---------------------------------------------------------------------------------------------------------- wiring
def unwrap(network: nn.Module) -> nn.Module:
    """The plain network inside ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif isinstance(getattr(network, "_orig_mod", None), nn.Module):
            network = network._orig_mod
        else:
            return network


def _parts(network: nn.Module):
    net = unwrap(network)
    encoder, decoder = getattr(net, "encoder", None), getattr(net, "decoder", None)
    if not all(hasattr(encoder, a) for a in ("stages", "strides", "output_channels")) or not hasattr(decoder, "stages"):
        raise TypeError(
            f"{type(net).__name__} is not a dynamic_network_architectures U-Net (encoder.stages, encoder.strides, "
            "encoder.output_channels, decoder.stages): the dragsaw nnU-Net trainers support the PlainConvUNet and "
            "ResidualEncoderUNet architectures of nnU-Net's plans. For another network, name the layers yourself "
            "(dragsaw.taps.insert_after, dragsaw.taps.FeatureTaps, dragsaw.pdcr.PatchDragsawLoss)."
        )
    return net, encoder, decoder


def _spatial_dims(encoder: nn.Module) -> int:
    return len(encoder.strides[0]) if isinstance(encoder.strides[0], (list, tuple)) else 1


def decoder_points(network: nn.Module) -> list[tuple[str, int]]:
    """``(name, channels)`` of every decoder stage, in the order of computation (lowest resolution first).

    Decoder stage ``s`` merges the upsampled features with skip ``-(s + 2)`` and outputs that skip's channels.
    """
    _, encoder, decoder = _parts(network)
    channels = list(encoder.output_channels)
    return [(f"decoder.stages.{s}", int(channels[-(s + 2)])) for s in range(len(decoder.stages))]


def insert_uafs(
    network: nn.Module,
    *,
    branches: int = 2,
    kernel_size: int = 3,
    hidden: int | None = None,
    norm: str = "batch",
    init_scale: float = 1.0,
) -> list[str]:
    """Insert an :class:`~dragsaw.uafs.UncertaintySelect` block after every decoder stage of a U-Net, in place.

    ``decoder.stages.<s>`` becomes ``nn.Sequential(stage, block)``: the stage's parameters move to
    ``decoder.stages.<s>.0.*``, the block's are ``decoder.stages.<s>.1.*``. The keyword arguments are those of
    :class:`~dragsaw.uafs.UncertaintySelect` (its defaults: ``M = 2``, a 3x3(x3) first conv, ``h = max(C // 4, 4)`` in
    3D and 16 in 2D, batch norm).

    Returns:
        The names of the decoder stages the blocks follow.

    Raises:
        TypeError: not a dynamic_network_architectures U-Net.
        ValueError: the decoder already has UAFS blocks.
    """
    net, encoder, decoder = _parts(network)
    if any(isinstance(m, UncertaintySelect) for m in decoder.modules()):
        raise ValueError("the decoder already has UAFS blocks; insert_uafs was called twice on this network.")
    dims = _spatial_dims(encoder)
    names = []
    for name, channels in decoder_points(net):
        block = UncertaintySelect(channels, spatial_dims=dims, branches=branches, kernel_size=kernel_size,
                                  hidden=hidden, norm=norm, init_scale=init_scale)
        insert_after(net, name, block)
        names.append(name)
    return names


def default_tap_stages(n_stages: int) -> tuple[int, int]:
    """The 3rd and 4th encoder skips, ``(2, 3)``; the two deepest stages for networks with fewer than 4 stages."""
    if n_stages >= 4:
        return (2, 3)
    if n_stages >= 2:
        return (n_stages - 2, n_stages - 1)
    raise ValueError(f"PDCR needs an encoder with at least 2 stages, got {n_stages}.")


def encoder_taps(network: nn.Module, stages: Sequence[int] = (2, 3)) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Channels and per-axis stride of the outputs of encoder stages ``stages`` (0-based: skip ``i`` is the output
    of ``encoder.stages.<i>``).

    Returns:
        ``"encoder.stages.<i>" -> (channels, stride)``, the stride the cumulative product of the stages' strides.
    """
    _, encoder, _ = _parts(network)
    n = len(encoder.stages)
    dims = _spatial_dims(encoder)
    bad = [i for i in stages if not (isinstance(i, int) and 0 <= i < n)]
    if bad or not stages:
        raise ValueError(f"encoder stages must be ints in 0..{n - 1} (the encoder has {n} stages), got {list(stages)}.")
    cumulative, stride = [], (1,) * dims
    for s in encoder.strides:
        s = tuple(s) if isinstance(s, (list, tuple)) else (s,) * dims
        stride = tuple(int(a) * int(b) for a, b in zip(stride, s))
        cumulative.append(stride)
    return {f"encoder.stages.{i}": (int(encoder.output_channels[i]), cumulative[i]) for i in stages}


def build_pdcr(
    network: nn.Module,
    num_classes: int,
    patch_size: Sequence[int],
    *,
    stages: Sequence[int] | None = None,
    weight: float = 0.01,
    cross_weight: float = 0.01,
    temperature: float = 0.5,
    samples: int = 64,
    patch_sizes: Sequence[int] = (5, 7, 9),
    ignore_index: int | None = None,
) -> tuple[PatchDragsawLoss, dict[str, tuple[int, ...]]]:
    """The PDCR regulariser of the 3D U-Net placement for ``network`` trained on patches of ``patch_size``.

    In-layer terms on the outputs of encoder stages ``stages`` (default :func:`default_tap_stages`: 2 and 3) with
    ``weight`` each, the cross-layer term between the first two with ``cross_weight``. Each layer samples
    ``samples`` grid locations (also in the cross-layer term), fewer where its feature grid (the patch size divided
    by its stride, after the default border crop) has fewer locations.

    Returns:
        ``(loss, strides)``: the :class:`~dragsaw.pdcr.PatchDragsawLoss` (on the CPU) and the tapped layers' per-axis
        strides, to pass to it with the features from ``FeatureTaps(network, loss.tapped)``.
    """
    _, encoder, _ = _parts(network)
    dims = _spatial_dims(encoder)
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != dims:
        raise ValueError(f"patch_size {list(patch_size)} must have {dims} entries (the network is {dims}D).")
    taps = encoder_taps(network, stages if stages is not None else default_tap_stages(len(encoder.stages)))
    counts = {}
    for name, (_, stride) in taps.items():
        grid = tuple(-(-p // s) for p, s in zip(patch, stride))  # a 'same'-padded strided conv gives ceil(p / s)
        border = auto_border(grid)
        available = math.prod(max(0, g - 2 * b) for g, b in zip(grid, border))
        counts[name] = max(1, min(int(samples), available))
    names = list(taps)
    loss = PatchDragsawLoss(
        num_classes, {n: weight for n in names}, spatial_dims=dims, samples=counts, patch_sizes=tuple(patch_sizes),
        cross_layers=[(names[0], names[1])] if len(names) >= 2 else [],
        in_channels={n: c for n, (c, _) in taps.items()},
        cross_weight=cross_weight, cross_samples=counts, temperature=temperature, ignore_index=ignore_index,
    )
    return loss, {n: stride for n, (_, stride) in taps.items()}


# --------------------------------------------------------------------------------------------------------- trainers
class nnUNetTrainerDragsaw(nnUNetTrainer):
    """nnU-Net's trainer with PDCR on the 3rd and 4th encoder skips (+ cross-layer) and UAFS after every decoder stage.

    Everything else (plans, data augmentation, deep supervision, Dice + CE, SGD and poly schedule, AMP with the grad
    scaler on CUDA, sliding-window validation and inference) is nnU-Net's. The settings are class attributes, so a
    variant is a subclass that overrides them.

    What changes:

    * :meth:`build_network_architecture` (also what ``nnUNetv2_predict`` calls) inserts the UAFS blocks, so their
      weights are part of ``network_weights`` in every checkpoint and are used at inference;
    * :meth:`configure_optimizers` (called by ``initialize`` right after the network is built) builds the PDCR module
      and adds its cross-layer projections to the optimizer as a second parameter group;
    * :meth:`train_step` adds the PDCR total (from the tapped skips and the full-resolution labels ``target[0]``) to
      nnU-Net's loss; the gradients of the network are clipped at 12 as in nnU-Net, those of the projections
      separately at 12; under DDP the projections' gradients are averaged over the ranks;
    * every epoch, ``pdcr_total`` (the weighted sum added to the loss) and the unweighted terms
      ``pdcr/layer/<name>`` and ``pdcr/cross/<p>~<q>`` are logged through ``self.logger`` and printed to the training
      log. ``train_losses`` stays nnU-Net's segmentation loss (comparable to ``val_losses`` and to nnUNetTrainer);
    * the projections are saved next to each checkpoint (``<checkpoint>.pdcr.pth``) for ``--c``;
    * ``torch.compile`` is off unless ``nnUNet_compile`` is set explicitly (PDCR reads features through forward
      hooks; compiled runs with hooks are untested here). The hooks are removed at the end of training.
    """

    dragsaw_pdcr: bool = True
    dragsaw_uafs: bool = True
    pdcr_stages: tuple[int, ...] | None = None  # None: (2, 3), or the two deepest stages of shallower encoders
    pdcr_weight: float = 0.01  # each in-layer term (3D recipe)
    pdcr_cross_weight: float = 0.01
    pdcr_temperature: float = 0.5
    pdcr_samples: int = 64
    pdcr_patch_sizes: tuple[int, ...] = (5, 7, 9)
    uafs_branches: int = 2  # M: the method's UAFS has no auxiliary supervision, so the default M = 2
    uafs_kernel_size: int = 3
    grad_clip: float = 12.0  # nnU-Net's

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.pdcr: PatchDragsawLoss | None = None
        self.pdcr_strides: dict[str, tuple[int, ...]] = {}
        self._taps: FeatureTaps | None = None
        self._pdcr_keys: list[str] = []
        super().__init__(plans, configuration, fold, dataset_json, device)

    # ------------------------------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        if cls.dragsaw_uafs:
            insert_uafs(network, branches=cls.uafs_branches, kernel_size=cls.uafs_kernel_size)
        return network

    def _do_i_compile(self) -> bool:
        if self.dragsaw_pdcr and "nnUNet_compile" not in os.environ:
            if self.device.type == "cuda":
                self.print_to_log_file("dragsaw: torch.compile is off because PDCR taps features with forward hooks; "
                                       "set nnUNet_compile=1 to compile anyway.")
            return False
        return super()._do_i_compile()

    def _build_pdcr(self) -> None:
        if self.label_manager.has_regions:
            raise RuntimeError(
                f"{type(self).__name__}: PDCR needs one class label per voxel, but this dataset is trained on regions "
                "(overlapping label groups). Use nnUNetTrainerDragsaw_UAFS (UAFS only) for region-based training."
            )
        net = unwrap(self.network)
        n_stages = len(net.encoder.stages)
        stages = tuple(self.pdcr_stages) if self.pdcr_stages is not None else default_tap_stages(n_stages)
        if self.pdcr_stages is None and stages != (2, 3):
            self.print_to_log_file(f"dragsaw: the encoder has only {n_stages} stages; PDCR taps stages {stages} "
                                   "instead of the 3rd and 4th skips.")
        self.pdcr, self.pdcr_strides = build_pdcr(
            net, self.label_manager.num_segmentation_heads, self.configuration_manager.patch_size, stages=stages,
            weight=self.pdcr_weight, cross_weight=self.pdcr_cross_weight, temperature=self.pdcr_temperature,
            samples=self.pdcr_samples, patch_sizes=self.pdcr_patch_sizes, ignore_index=self.label_manager.ignore_label,
        )
        self.pdcr.to(self.device)
        self._pdcr_keys = ["pdcr_total"] + [f"pdcr/layer/{n}" for n in self.pdcr.layer_weights]
        self._pdcr_keys += [f"pdcr/cross/{p}~{q}" for p, q in self.pdcr.cross_layers]
        self._register_log_keys()
        self.print_to_log_file(f"dragsaw PDCR: {self.pdcr.extra_repr()}, strides={self.pdcr_strides}")

    def _register_log_keys(self) -> None:
        """nnU-Net's local logger accepts only keys it knows, one value per epoch: add ours (padded with NaN up to
        the current epoch when resuming from a checkpoint without them)."""
        store = getattr(self.logger, "local_logger", self.logger).my_fantastic_logging
        for key in self._pdcr_keys:
            values = store.setdefault(key, [])
            while len(values) < self.current_epoch:
                values.append(float("nan"))

    def configure_optimizers(self):
        if self.dragsaw_pdcr and self.pdcr is None:  # initialize() calls this right after building the network
            self._build_pdcr()
        optimizer, lr_scheduler = super().configure_optimizers()
        extra = self._pdcr_parameters()
        if extra:
            optimizer.add_param_group({"params": extra})  # the network group's lr, momentum and weight decay
        return optimizer, lr_scheduler

    def _pdcr_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.pdcr.parameters() if p.requires_grad] if self.pdcr is not None else []

    # ------------------------------------------------------------------------------------------ taps
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.pdcr is not None and self._taps is None:
            self._taps = FeatureTaps(unwrap(self.network), list(self.pdcr.tapped))

    def remove_taps(self) -> None:
        """Remove PDCR's forward hooks (done at the end of training; nothing stays attached to the network)."""
        if self._taps is not None:
            self._taps.close()
            self._taps = None

    def on_train_end(self) -> None:
        self.remove_taps()
        super().on_train_end()
        latest = self._pdcr_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if self.local_rank == 0 and os.path.isfile(latest):
            os.remove(latest)

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self, batch: dict) -> dict:
        if self.pdcr is None or self._taps is None:
            return super().train_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        labels = target[0] if isinstance(target, list) else target  # full resolution, [B, 1, *patch]

        self.optimizer.zero_grad(set_to_none=True)
        self._taps.pop()  # nothing from an earlier forward outside training steps
        # autocast on CUDA only, as nnU-Net does (see nnUNetTrainer.train_step)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            seg_loss = self.loss(output, target)
            result = self.pdcr(self._taps.pop(), labels, self.pdcr_strides)
            loss = seg_loss + result.total

        extra = self._pdcr_parameters()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self._average_pdcr_grads(extra)
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            if extra:
                torch.nn.utils.clip_grad_norm_(extra, self.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._average_pdcr_grads(extra)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            if extra:
                torch.nn.utils.clip_grad_norm_(extra, self.grad_clip)
            self.optimizer.step()
        out = {"loss": seg_loss.detach().cpu().numpy(), "pdcr_total": float(result.total.detach())}
        out.update({f"pdcr/{key}": float(value) for key, value in result.terms.items()})
        return out

    def _average_pdcr_grads(self, params: list[nn.Parameter]) -> None:
        """The projections are outside the DDP wrapper: average their gradients over the ranks by hand."""
        if not (self.is_ddp and params):
            return
        world = torch.distributed.get_world_size()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)

    def validation_step(self, batch: dict) -> dict:
        try:
            return super().validation_step(batch)
        finally:
            if self._taps is not None:
                self._taps.pop()  # the hooks also fire in validation forwards: keep nothing

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if not self._pdcr_keys:
            return
        means = {}
        for key in self._pdcr_keys:
            values = [o[key] for o in train_outputs if key in o]
            means[key] = float(np.mean(values)) if values else float("nan")
        if self.is_ddp:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, means)
            means = {k: float(np.nanmean([g[k] for g in gathered])) for k in self._pdcr_keys}
        for key, value in means.items():
            self.logger.log(key, value, self.current_epoch)
        terms = ", ".join(f"{k[len('pdcr/'):]} {v:.4f}" for k, v in means.items() if k != "pdcr_total")
        self.print_to_log_file(f"PDCR total (weighted, added to the loss): {means['pdcr_total']:.4f}; "
                               f"terms (unweighted): {terms}")

    # ------------------------------------------------------------------------------------------ checkpoints
    @staticmethod
    def _pdcr_checkpoint(filename: str) -> str:
        return (filename[:-4] if filename.endswith(".pth") else filename) + ".pdcr.pth"

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self._pdcr_parameters() and self.local_rank == 0 and not self.disable_checkpointing:
            with atomic_file(self._pdcr_checkpoint(filename)) as tmp:
                torch.save({"pdcr": self.pdcr.state_dict(), "strides": self.pdcr_strides}, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if self.pdcr is not None:
            side = self._pdcr_checkpoint(filename_or_checkpoint) if isinstance(filename_or_checkpoint, str) else None
            if side is not None and os.path.isfile(side):
                state = torch.load(side, map_location=self.device, weights_only=True)
                self.pdcr.load_state_dict(state["pdcr"])
            elif self._pdcr_parameters():
                self.print_to_log_file("dragsaw: no PDCR state next to the checkpoint; the cross-layer projections "
                                       "start from their initialisation.")
            self._register_log_keys()


class nnUNetTrainerDragsaw_PDCR(nnUNetTrainerDragsaw):
    """PDCR only: nnU-Net's network unchanged, the PDCR terms added to its loss."""

    dragsaw_uafs = False


class nnUNetTrainerDragsaw_UAFS(nnUNetTrainerDragsaw):
    """UAFS only: the blocks after every decoder stage, nnU-Net's loss unchanged."""

    dragsaw_pdcr = False


class nnUNetTrainerDragsaw_5it(nnUNetTrainerDragsaw):
    """PDCR + UAFS for smoke tests: 1 epoch of 5 training iterations, 1 validation iteration, and no test-time
    mirroring (in the final validation and, through the checkpoint, in ``nnUNetv2_predict``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 5
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # (rotation, dummy 2D augmentation, initial patch size, mirror axes); it also sets the inference axes
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # training still mirrors; inference does not (speed)
        return result


# -------------------------------------------------------------------------------------------------------------- CLI
def _check() -> int:
    """Look every trainer up the way nnUNetv2_train does, in the current environment."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    listed = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    if not any(os.path.realpath(p) == os.path.realpath(trainer_path()) for p in listed):
        print(f"nnUNet_extTrainer does not list {trainer_path()}; run\n"
              f'  export nnUNet_extTrainer="$(python -m dragsaw.integrations.nnunet path)"', file=sys.stderr)
        return 1
    for name in TRAINER_NAMES:
        found = recursive_find_trainer_class_by_name(name)
        print(f"{name}: {found.__module__}.{found.__qualname__}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dragsaw.integrations.nnunet",
        description="nnU-Net v2 trainers with PDCR and UAFS. nnU-Net finds them through the nnUNet_extTrainer "
                    "environment variable: export nnUNet_extTrainer=\"$(python -m dragsaw.integrations.nnunet path)\"",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("path", help="print the folder to list in nnUNet_extTrainer")
    sub.add_parser("check", help="look the dragsaw trainers up as nnUNetv2_train does (in this environment)")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(trainer_path())
        return 0
    return _check()


if __name__ == "__main__":
    sys.exit(main())
