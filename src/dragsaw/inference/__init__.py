"""Inference: native-resolution predictions, class probabilities and UAFS uncertainty maps; evaluation loops.

One module per concern:

* :mod:`.device`: ``--device`` and ``--precision`` (:func:`resolve_device`, :func:`autocast_dtype`);
* :mod:`.forward`: one forward pass at the input size, test-time mirroring, the UAFS map (:func:`infer`);
* :mod:`.ensemble`: several runs averaged (:class:`Ensemble`, :func:`check_ensemble`);
* :mod:`.postprocess`: largest connected component per class;
* :mod:`.outputs`: what differs between images and volumes (checks, native geometry, files written);
* :mod:`.evaluate`: per-case scores of a data loader (:func:`evaluate_loader`);
* :mod:`.predict`: ``dragsaw predict`` on files (:func:`predict_files`).
"""

from .device import DEVICE_CHOICES, PRECISIONS, autocast_dtype, resolve_device
from .ensemble import ENSEMBLE_PLAN_KEYS, Ensemble, check_ensemble, infer_members, mean_probabilities
from .evaluate import evaluate_loader
from .forward import InferenceSettings, finest_uncertainty, infer, record_uncertainty
from .outputs import native_prediction, prediction_names, save_png_atomic
from .postprocess import (AUTO, LARGEST_COMPONENT_CONNECTIVITY, POSTPROCESS, SMALL_COMPONENT_FRACTION,
                          check_postprocess, choose_postprocess, keep_largest_components, postprocess_prediction,
                          remove_small_components)
from .predict import PREDICT_MANIFEST, predict_files, read_predict_manifest

__all__ = [
    "InferenceSettings", "PRECISIONS", "DEVICE_CHOICES", "resolve_device", "autocast_dtype", "infer",
    "record_uncertainty", "finest_uncertainty", "evaluate_loader", "predict_files", "save_png_atomic",
    "prediction_names", "native_prediction", "PREDICT_MANIFEST", "read_predict_manifest", "Ensemble",
    "infer_members", "mean_probabilities", "check_ensemble", "ENSEMBLE_PLAN_KEYS", "POSTPROCESS",
    "LARGEST_COMPONENT_CONNECTIVITY", "SMALL_COMPONENT_FRACTION", "postprocess_prediction", "keep_largest_components",
    "remove_small_components", "check_postprocess", "AUTO", "choose_postprocess",
]
