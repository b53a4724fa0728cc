"""The ``nisbflow`` command line: a thin Typer layer, each command parsing its options, calling one library entry
(:mod:`nisbflow.jobs`) and printing the report.

The application and its groups are :mod:`nisbflow_cli.app`; shared options :mod:`nisbflow_cli.options`; errors
:mod:`nisbflow_cli.errors`; everything printed :mod:`nisbflow_cli.tables`; the commands, by group,
:mod:`~nisbflow_cli.pipeline` (infer, decode, evaluate, test, demo), :mod:`~nisbflow_cli.tuning` (tune,
tune-test), :mod:`~nisbflow_cli.data` (synth, synth-affinities, skeleton, skeletonize, view),
:mod:`~nisbflow_cli.models` (model, train) and :mod:`~nisbflow_cli.configuration` (config show). Configuration keys
and modes follow PyTorch Connectomics' ``scripts/main.py`` so NISB tutorial users feel at home.
"""

from __future__ import annotations

from nisbflow_cli import configuration, data, models, modes, pipeline, tuning  # noqa: F401 - they register the commands
from nisbflow_cli.app import app

__all__ = ["app", "main"]


def main():  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
