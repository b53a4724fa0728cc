"""The ``nisbflow`` Typer application and its command groups (``config``, ``skeleton``, ``model``); the commands
themselves live in the group modules that :mod:`nisbflow_cli.main` imports."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from nisbflow_cli.errors import OPTIONS


class ReadableGroup(TyperGroup):
    """nisbflow's command groups: ``-h`` as well as ``--help``, and option types in help as words (``TEXT``,
    ``INTEGER``, ``FLOAT``; nothing after a flag) rather than ``<str>``/``<bool>``."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            readable_metavars(command, ctx)
        return command

    def format_help(self, ctx, formatter):
        readable_metavars(self, ctx)
        return super().format_help(ctx, formatter)


class RootGroup(ReadableGroup):
    """The ``nisbflow`` group: PyTorch Connectomics' command line ``--config FILE --mode MODE [--checkpoint C]
    [KEY=VALUE …]`` (``python scripts/main.py`` replaced by ``nisbflow``) runs the ``run`` command."""

    MODE_FORM = ("--config", "--config-file", "-c", "--mode", "--checkpoint")

    def parse_args(self, ctx, args):
        index = 0
        while index < len(args) and args[index] == "--debug":
            index += 1
        if index < len(args) and args[index].split("=")[0] in self.MODE_FORM:
            args = [*args[:index], "run", *args[index:]]
        return super().parse_args(ctx, args)


READABLE_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": ""}


def readable_type(bare: str) -> str:
    """``str`` → ``TEXT``, ``list[float]`` → ``FLOAT ...`` and so on."""
    if bare.startswith("list[") and bare.endswith("]"):
        return readable_type(bare[5:-1]) + " ..."
    return READABLE_TYPES.get(bare, bare.upper())


def readable_metavars(command, ctx) -> None:
    """Give every parameter a readable type in help; flags get none."""
    from typer.core import TyperArgument, TyperOption

    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else readable_type(param.bare_type())
        elif isinstance(param, TyperArgument) and "display_type_rich" not in vars(param):
            label = readable_type(param.bare_type())
            # this parameter's type column only (an instance attribute over Typer's method)
            param.display_type_rich = lambda ctx, label=label: label  # type: ignore[method-assign,misc]


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="nisbflow",
    help="Dense neuron segmentation of EM volumes at scale: the NISB BANIS baseline as Dask graphs over zarr.\n\n"
    "Axes are XYZ as NISB stores them; volumes are zarr arrays named by path or URL, e.g. "
    "run/seed101/data.zarr/img.\n\n"
    "PyTorch Connectomics' command lines work with nisbflow for python scripts/main.py: nisbflow --config FILE "
    "--mode train|test|tune|tune-test [--checkpoint C] [KEY=VALUE ...] (see nisbflow run --help).",
    no_args_is_help=True,
    add_completion=False,
    cls=RootGroup,
    context_settings=HELP_OPTIONS,
)
config_app = typer.Typer(
    help="Inspect the resolved configuration.", no_args_is_help=True, cls=ReadableGroup, context_settings=HELP_OPTIONS
)
skeleton_app = typer.Typer(
    help="Work with NISB skeletons (skeleton.pkl).",
    no_args_is_help=True,
    cls=ReadableGroup,
    context_settings=HELP_OPTIONS,
)
app.add_typer(config_app, name="config")
app.add_typer(skeleton_app, name="skeleton")
model_app = typer.Typer(
    help="Model checkpoints.", no_args_is_help=True, cls=ReadableGroup, context_settings=HELP_OPTIONS
)
app.add_typer(model_app, name="model")


def _print_version(value: bool) -> None:
    if value:
        from nisbflow import __version__

        typer.echo(f"nisbflow {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error instead of one line."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print nisbflow's version and exit."
    ),
):
    """Dense neuron segmentation of EM volumes at scale: the NISB BANIS baseline as Dask graphs over zarr."""
    OPTIONS["debug"] = debug
