"""Which thresholds a decode uses, chosen one way for the command line and the library.

Given thresholds win. Otherwise connected components use ``decoding.threshold`` as the run's settings resolved it
(a configuration, parameters or override, else the threshold the affinities record: the model's tuned value, else
the default 0.75) and waterz uses ``decoding.waterz.thresholds``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThresholdChoice:
    """The thresholds of a decode (each in [0, 1]) and where they came from."""

    values: tuple[float, ...]
    source: str
    method: str = "cc"
    scoring: str | None = None

    def describe(self) -> str:
        """The line the commands print, e.g. ``decoding threshold 0.7 from checkpoint nisb-tiny-synthetic``."""
        what = f"waterz ({self.scoring}) " if self.method == "waterz" else ""
        listed = ", ".join(f"{t:g}" for t in self.values)
        if self.source.startswith("("):  # given by the caller: "(-t)"
            return f"decoding {what}thresholds {listed} {self.source}"
        noun = "thresholds" if self.method == "waterz" else "threshold"
        return f"decoding {what}{noun} {listed} from {self.source}"


def choose_thresholds(run, given=None, given_as: str = "(given)") -> ThresholdChoice:
    """The thresholds for ``run`` (a :class:`~nisbflow.settings.RunSettings`): ``given`` when not None (labelled
    ``given_as``, the command line's ``(-t)``), else by ``decoding.method`` as the module docstring says. Values are
    range-checked."""
    from nisbflow.decode.kernel import check_thresholds

    decoding = run.config.decoding
    scoring = decoding.waterz.scoring if decoding.method == "waterz" else None
    if given is not None:
        values, source = list(given), given_as
    elif decoding.method == "waterz":
        values, source = decoding.thresholds(), "decoding.waterz.thresholds"
    else:
        values, source = [decoding.threshold], run.sources.get("decoding.threshold", "the default")
    return ThresholdChoice(tuple(check_thresholds(values)), source, decoding.method, scoring)


def recorded_thresholds(affinities, run, method: str, log) -> tuple[float, ...]:
    """The thresholds a decode without given ones uses (``run``: its :class:`~nisbflow.settings.RunSettings`, or None
    for the threshold the affinities record) (see :func:`~nisbflow.decode.to_zarr.decode_to_zarr`), said
    through ``log``."""
    from nisbflow.data.volumes import open_affinities
    from nisbflow.decode.thresholds import choose_thresholds
    from nisbflow.settings import recorded_settings, resolve_settings

    if run is None:
        attrs = dict(open_affinities(affinities).attrs)
        run = resolve_settings(
            None,
            overrides={"decoding.method": method},
            recorded=recorded_settings(attrs),
            recorded_from=f"the attributes of {affinities}",
        )
    choice = choose_thresholds(run)
    log(choice.describe())
    return choice.values
