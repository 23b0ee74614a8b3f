"""The Lightning module: segmentation loss + weighted PDCR terms, UAFS inside the host, per-case validation."""

from __future__ import annotations

import math
import random
import warnings

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ..config import RunConfig, config_from_dict, config_to_dict
from ..errors import DragsawError
from ..inference import InferenceSettings, infer, native_prediction
from ..metrics import case_metrics, summarize
from ..plan import Plan
from ..taps import FeatureTaps
from ..uafs import UncertaintySelect, at_least_float32, uafs_aux_loss
from .build import build_network
from .distributed import gather_cases

__all__ = ["SegmentationTask", "NonFiniteLossError", "ramp_factor", "warmup_cosine_schedule"]


_FIX_SAVED = ("the checkpoint is damaged or from an incompatible dragsaw; use the run's other checkpoint, restore it "
              "from a backup, or train the run again")


class NonFiniteLossError(DragsawError):
    """The training loss became NaN or infinite."""


def ramp_factor(step: int, ramp_steps: float) -> float:
    """PDCR weight multiplier ``min(1, step / ramp_steps)``: 0 at step 0, linear up to 1 at ``ramp_steps``, then 1.

    Args:
        step: the global optimizer step (an int >= 0).
        ramp_steps: length of the ramp in steps (``pdcr.ramp_epochs * steps_per_epoch``), a finite number
            >= 0; 0 disables the ramp (1 from step 0, the paper's form).

    Returns:
        A float in ``[0, 1]``.

    Raises:
        ValueError: a negative or non-integer step, or a negative or non-finite ``ramp_steps``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"ramp_factor: step must be an int >= 0 (the global step), got {step!r}.")
    if isinstance(ramp_steps, bool) or not isinstance(ramp_steps, (int, float)) or not (
        math.isfinite(ramp_steps) and ramp_steps >= 0
    ):
        raise ValueError(
            f"ramp_factor: ramp_steps must be a finite number >= 0 (0 = no ramp), got {ramp_steps!r}; set "
            "pdcr.ramp_epochs >= 0."
        )
    if ramp_steps == 0:
        return 1.0
    return min(1.0, step / ramp_steps)


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_lr: float
) -> torch.optim.lr_scheduler.SequentialLR:
    """Linear warm-up over ``warmup`` steps, then a half cosine down to ``min_lr`` at step ``total``, then ``min_lr``.

    PyTorch's schedulers in a ``SequentialLR``: step 0 runs at the base rate (as the paper's code does; a
    ``ConstantLR``), steps ``1..warmup-1`` at ``step / warmup`` of it (a ``LinearLR``), steps ``warmup..total`` on a
    ``CosineAnnealingLR`` from the base rate to ``min_lr`` over ``max(1, total - warmup)`` steps, later steps stay at
    ``min_lr`` (a ``MultiplicativeLR`` by 1: ``CosineAnnealingLR`` alone would rise again). The cosine is PyTorch's
    recursive form, equal to the closed form ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2`` to ~1e-15 relative.
    (MONAI's ``WarmupCosineSchedule`` cannot express this: it decays to 0 and clips at ``end_lr`` instead of
    scaling the cosine to ``min_lr``, rises again after ``t_total`` and starts warm-up at 0.)
    """
    phases, milestones = [], []
    if warmup >= 1:
        phases.append(torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=1))
        milestones.append(1)
    if warmup >= 2:
        phases.append(torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1))
        milestones.append(warmup)
    cosine = max(1, total - warmup)
    phases.append(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cosine, eta_min=min_lr))
    milestones.append(warmup + cosine + 1)  # after the cosine's last step, which lands exactly on min_lr
    phases.append(torch.optim.lr_scheduler.MultiplicativeLR(optimizer, lambda _: 1.0))
    return _WarmupCosine(optimizer, phases, milestones)


class _WarmupCosine(torch.optim.lr_scheduler.SequentialLR):
    """The schedule's ``SequentialLR``, which also resumes a checkpoint of dragsaw <= 0.1's ``LambdaLR`` form of the
    same schedule (no ``_schedulers`` in its state): it replays that state's ``last_epoch`` steps."""

    def load_state_dict(self, state_dict: dict) -> None:
        if "_schedulers" in state_dict:
            super().load_state_dict(state_dict)
            return
        with warnings.catch_warnings():  # stepping without optimizer steps is intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(int(state_dict.get("last_epoch", 0))):
                self.step()


def main_logits(output) -> torch.Tensor:
    """The full-resolution logits of a host's output (deep-supervision hosts return a list, finest first)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def use_channels_last(model: torch.nn.Module, spatial_dims: int) -> None:
    """Keep ``model``'s weights and inputs in channels-last memory order (2D/3D; other ranks are left alone).

    Same values, another layout: oneDNN convolutions on CPU run 20-30% faster per training step here (3D U-Net
    2 x 2 x 48 x 48 x 32: 0.25 -> 0.19 s; 2D U-Net 8 x 3 x 256 x 256: 1.58 -> 1.12 s), and tensor cores
    prefer it under mixed precision. A forward pre-hook converts every input, so callers pass ordinary tensors.
    """
    formats = {2: torch.channels_last, 3: torch.channels_last_3d}
    if spatial_dims not in formats:
        return
    fmt = formats[spatial_dims]
    model.to(memory_format=fmt)
    for param in model.parameters():  # 1x1 kernels: both layouts are dense, but autograd makes their grads in the
        if param.ndim == spatial_dims + 2 and all(s == 1 for s in param.shape[2:]):  # plain one, which DDP's
            param.data = param.data.clone(memory_format=torch.contiguous_format)  # buckets must match

    def to_format(module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == spatial_dims + 2:
            return (args[0].contiguous(memory_format=fmt), *args[1:])
        return None

    model.register_forward_pre_hook(to_format)


def _numpy_state_to_plain(state: tuple) -> tuple:
    """numpy's RNG state with its key array as a tensor (checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = state
    return kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)


class SegmentationTask(L.LightningModule):
    """Train a host network with cross-entropy (+ optional Dice) and the PDCR regulariser.

    Args:
        config: the resolved run configuration as a dict (saved in every checkpoint, so a checkpoint alone
            rebuilds the network).
        in_channels: channels of the input images.
        steps_per_epoch: optimizer steps per epoch on each process (for the warm-up/cosine schedule and the PDCR
            ramp; with several devices, the single-device steps shared out, see
            :func:`dragsaw.engine.distributed.per_rank_steps`).
        plan: the run's plan as a plain dict (:meth:`dragsaw.plan.Plan.to_dict`), saved in every checkpoint with
            the configuration; ``None`` (checkpoints from before plans) rebuilds it from ``config``, whose
            ``data.target_spacing`` / ``modalities`` / ``ct_stats`` such runs filled in
            (:meth:`dragsaw.plan.Plan.from_config`).

    Attributes:
        plan: the :class:`dragsaw.plan.Plan` the network was built with (and inference preprocesses with).
    """

    def __init__(self, config: dict, in_channels: int, steps_per_epoch: int = 1, plan: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config: RunConfig = config_from_dict(config)
        self.plan: Plan = (Plan.from_dict(plan, source="the plan saved with the model", fix=_FIX_SAVED)
                           if plan is not None else Plan.from_config(self.config, in_channels=in_channels))
        network = build_network(self.config, in_channels, self.plan)
        self.model = network.model
        self.pdcr = network.pdcr
        self.tap_names = network.tap_names
        self.strides = network.strides
        tc = self.config.train
        weights = torch.tensor(tc.class_weights, dtype=torch.float32) if tc.class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True) if tc.dice_weight > 0 else None
        if tc.channels_last:
            use_channels_last(self.model, self.config.model.spatial_dims)
        self._taps: FeatureTaps | None = None
        self._uafs_blocks = [m for m in self.model.modules() if isinstance(m, UncertaintySelect)]  # fixed once built
        self._val_cases: list[tuple[str, dict]] = []  # (case id, metrics) of this process's validation cases

    @classmethod
    def from_config(cls, config: RunConfig, in_channels: int, steps_per_epoch: int = 1,
                    plan: Plan | None = None) -> SegmentationTask:
        """The task of a :class:`~dragsaw.config.RunConfig` and (for a run) its :class:`~dragsaw.plan.Plan`; without a
        plan the network is planned from ``config`` alone (see :meth:`dragsaw.plan.Plan.from_config`)."""
        return cls(config_to_dict(config), in_channels, steps_per_epoch, None if plan is None else plan.to_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, *S]`` for images ``[B, C, *S]`` (the host's full-resolution output)."""
        return main_logits(self.model(x))

    # -------------------------------------------------------------- taps
    def _ensure_taps(self) -> None:
        if self._taps is None and self.tap_names:
            self._taps = FeatureTaps(self.model, self.tap_names)

    def remove_taps(self) -> None:
        """Remove the forward hooks (called at the end of fitting; nothing stays attached to the model)."""
        if self._taps is not None:
            self._taps.close()
            self._taps = None

    def on_fit_end(self) -> None:
        self.remove_taps()

    def setup(self, stage: str) -> None:
        """With ``train.compile``, compile the host network in place (its parameter names, and so checkpoints,
        stay those of the uncompiled network)."""
        if stage == "fit" and self.config.train.compile and not getattr(self.model, "_compiled_call_impl", None):
            self.model.compile()

    # -------------------------------------------------------------- training
    def segmentation_loss(self, output, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (+ Dice) on the logits; deep-supervision outputs get weights 1/2^i (normalised)."""
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        weights = [0.5**i for i in range(len(outputs))]
        total = 0.0
        for weight, logits in zip(weights, outputs):
            target = labels
            if logits.shape[2:] != labels.shape[1:]:
                target = F.interpolate(labels[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
            logits = at_least_float32(logits)
            class_weights = None if self.class_weights is None else self.class_weights.to(logits.dtype)
            loss = F.cross_entropy(logits, target, weight=class_weights)
            if self.dice is not None:
                loss = loss + self.config.train.dice_weight * self.dice(logits, target[:, None])
            total = total + weight * loss
        return total / sum(weights)

    def _forward_keeping_head_logits(self, images: torch.Tensor):
        """The host's output and, with ``uafs.aux_weight > 0``, the logits of every UAFS head that ran.

        The blocks keep their logits only during this forward; the references are taken and cleared here, so
        nothing stays attached to the blocks (validation and inference never keep them).
        """
        uc = self.config.uafs
        blocks = self._uafs_blocks if uc.aux_weight > 0 else []
        for block in blocks:
            block.keep_logits, block.last_logits = True, None
        try:
            output = self.model(images)
        finally:
            for block in blocks:
                block.keep_logits = False
        head_logits = [block.last_logits for block in blocks if block.last_logits is not None]
        for block in blocks:
            block.last_logits = None
        if blocks and not head_logits:
            raise DragsawError(
                f"uafs.aux_weight={uc.aux_weight} but none of the {len(blocks)} UAFS blocks ran in the forward; check "
                "uafs.points or set uafs.aux_weight=0."
            )
        return output, head_logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._ensure_taps()
        images, labels = batch["image"], batch["label"]
        output, head_logits = self._forward_keeping_head_logits(images)
        features = self._taps.pop() if self._taps is not None else {}
        seg = self.segmentation_loss(output, labels)
        loss = seg
        logs = {"train/seg": seg.detach()}
        if self.pdcr is not None:
            result = self.pdcr(features, labels, self.strides)
            per_epoch = max(1, int(self.hparams.steps_per_epoch))
            ramp = ramp_factor(int(self.global_step), self.config.pdcr.ramp_epochs * per_epoch)
            loss = loss + ramp * result.total
            logs["train/pdcr"] = result.total.detach()  # before the ramp: comparable across ramp settings
            logs["train/pdcr_ramp"] = ramp
            logs.update({f"train/pdcr/{k}": v for k, v in result.terms.items()})
        if head_logits:
            aux = uafs_aux_loss(head_logits, labels)
            loss = loss + self.config.uafs.aux_weight * aux
            logs["train/uafs_aux"] = aux.detach()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at global step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); terms: "
                f"{ {k: round(float(v), 6) for k, v in logs.items()} }. Lower train.lr, check the data with "
                "`dragsaw verify`, or use precision 32-true."
            )
        logs["train/loss"] = loss.detach()
        several = self._trainer is not None and self.trainer.world_size > 1  # epoch means over every rank's batches
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=images.shape[0], prog_bar=False, sync_dist=several)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    # -------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_cases = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Every case scored in its native geometry, as the final evaluation scores it (images: logits resized to
        the mask's size; volumes: sliding-window prediction mapped back to the file's grid), without HD95."""
        K = self.config.data.num_classes
        logits, _ = infer(self.model, batch["image"], InferenceSettings.from_config(self.config, plan=self.plan))
        if self._taps is not None:
            self._taps.pop()
        for i, native in enumerate(batch["label_native"]):
            pred = native_prediction(logits[i : i + 1], batch["meta"][i], self.config.model.spatial_dims)
            self._val_cases.append((batch["case_id"][i], case_metrics(pred, native.cpu(), K, include_hd95=False)))

    def _validation_order(self) -> dict[str, int]:
        """Case id -> position in the validation set (the order a single process validates in)."""
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        cases = getattr(getattr(data, "eval_sets", {}).get("val"), "cases", None) or []
        return {c.case_id: i for i, c in enumerate(cases)}

    def on_validation_epoch_end(self) -> None:
        """Validation scores over the whole validation set: with several processes the per-case results of every
        rank are gathered (each case once) and averaged in the dataset's order, the same number on every rank."""
        order = self._validation_order()
        keyed = [((order.get(cid, len(order)), cid), metrics) for cid, metrics in self._val_cases]
        cases = gather_cases(self._trainer, keyed)
        if not cases:
            return
        summary = summarize(cases)
        several = self._trainer is not None and self.trainer.world_size > 1
        for key in ("dice_fg", "jaccard_fg", "accuracy"):  # equal on every rank: "max" keeps the value exactly
            self.log(f"val/{key}", summary[key]["mean"], prog_bar=key == "dice_fg", sync_dist=several,
                     reduce_fx="max")

    # -------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the global random states (dropout, random PDCR sampling) so a resumed run continues them."""
        checkpoint["dragsaw_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("dragsaw_rng")
        if state is None or getattr(self, "_trainer", None) is None:  # only when a Trainer resumes, not on load
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
        random.setstate(state["python"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    # -------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        tc = self.config.train
        optimizer = torch.optim.Adam(self.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        per_epoch = max(1, int(self.hparams.steps_per_epoch))
        total = tc.max_steps if tc.max_steps else tc.epochs * per_epoch
        warmup = int(round(tc.warmup_epochs * per_epoch))
        schedule = warmup_cosine_schedule(optimizer, warmup, total, tc.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
