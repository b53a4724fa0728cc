"""One library entry per command: what ``nisbflow infer``, ``decode``, ``test`` and ``demo`` do, callable from a
notebook with the same result.

Each entry takes typed options, the settings' sources (``config`` YAML, ``params`` YAML, ``overrides`` as a mapping
of key to value or ``key.path=value`` strings) and a :class:`ClusterSpec`, and runs the same steps in the same
order: resolve the settings → check the inputs → refuse a bad output (:func:`preflight`) → open the cluster → run
the stage → return a typed report. Everything it would print goes through ``log`` (one line per call, plain text);
the command line passes its console and prints the report, a notebook reads the report.

Axes are XYZ throughout, as NISB stores them: images ``(X, Y, Z)`` uint8, affinities ``(C, X, Y, Z)``,
segmentations ``(X, Y, Z)`` uint32/uint64.

The entries live by command group, as the command line's modules do: :mod:`~nisbflow.jobs.pipeline`,
:mod:`~nisbflow.jobs.tuning`, :mod:`~nisbflow.jobs.data`, :mod:`~nisbflow.jobs.models`,
:mod:`~nisbflow.jobs.configuration`, over :mod:`~nisbflow.jobs.common`.
"""

from nisbflow.jobs.common import ClusterSpec, cluster_session, preflight, weight_choices
from nisbflow.jobs.configuration import ConfigRefused, TrainReport, show_config, train
from nisbflow.jobs.data import SYNTH_LAYOUTS, ConvertReport, convert, skeleton_convert, synth, synth_affinities
from nisbflow.jobs.models import (
    ModelExportReport,
    ModelImportReport,
    ModelInitReport,
    ShippedModel,
    model_export,
    model_import,
    model_init,
    model_list,
)
from nisbflow.jobs.pipeline import (
    DecodeReport,
    EvaluateReport,
    InferReport,
    TestReport,
    decode,
    demo,
    evaluate,
    infer,
    skeletonize,
    test,
)
from nisbflow.jobs.tuning import TuneTestReport, tune, tune_test, tuned_params
from nisbflow.pipelines import DemoRun

__all__ = [
    "SYNTH_LAYOUTS",
    "ClusterSpec",
    "ConfigRefused",
    "ConvertReport",
    "DecodeReport",
    "DemoRun",
    "EvaluateReport",
    "InferReport",
    "ModelExportReport",
    "ModelImportReport",
    "ModelInitReport",
    "ShippedModel",
    "TestReport",
    "TrainReport",
    "TuneTestReport",
    "cluster_session",
    "convert",
    "decode",
    "demo",
    "evaluate",
    "infer",
    "model_export",
    "model_import",
    "model_init",
    "model_list",
    "preflight",
    "show_config",
    "skeleton_convert",
    "skeletonize",
    "synth",
    "synth_affinities",
    "test",
    "train",
    "tune",
    "tune_test",
    "tuned_params",
    "weight_choices",
]
