"""One declaration per parameter: CLI options, batch columns and panel defaults come from the
dataclass field, and messages name the parameter."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import pytest

from MedAnalysisLib.core import parameters as P
from MedAnalysisLib.core.enhance import EnhancementParameters
from MedAnalysisLib.core.errors import InputError


@dataclasses.dataclass
class Example:
    method: str = P.option("fast", "how", choices=("fast", "slow"))
    size_mm: float = P.option(2.5, "kernel size", unit="mm", flag="--size")
    spacing_mm: Optional[tuple] = P.option(None, "spacing", unit="mm", parse=P.parse_spacing, flag="--spacing")
    smooth: bool = P.option(False, "smooth the result")
    keep: bool = P.option(True, "keep the input")
    hidden: int = P.option(3, "internal", cli=False, batch=False)
    plain: int = 7


def parse(*argv):
    parser = argparse.ArgumentParser()
    P.add_arguments(parser, Example)
    return parser, parser.parse_args(list(argv))


def test_one_declaration_gives_cli_batch_and_panel_defaults():
    parser, args = parse()
    assert P.from_namespace(Example, args) == Example()
    _, args = parse("--method", "slow", "--size", "1.5", "--spacing", "2", "--smooth", "--no-keep")
    assert P.from_namespace(Example, args) == Example("slow", 1.5, (2.0, 2.0, 2.0), True, False)
    assert P.batch_columns(Example) == ("method", "size", "spacing", "smooth", "keep")
    row = {"method": "slow", "size": "", "spacing": "1 1 3", "smooth": "yes", "keep": "no", "hidden": "9"}
    assert P.from_row(Example, row) == Example("slow", 2.5, (1.0, 1.0, 3.0), True, False, 3)
    assert P.defaults(Example)["size_mm"] == 2.5 and P.defaults(Example)["plain"] == 7
    assert "--hidden" not in parser.format_help() and "(mm)" in parser.format_help()


@pytest.mark.parametrize("argv, name", [(["--size", "big"], "size_mm"), (["--spacing", "1,0,1"], "spacing_mm"),
                                        (["--spacing", "nan"], "spacing_mm")])
def test_bad_values_are_refused_naming_the_parameter(argv, name):
    _, args = parse(*argv)
    with pytest.raises(InputError) as caught:
        P.from_namespace(Example, args)
    assert str(caught.value).startswith(name) and "--" not in str(caught.value)
    with pytest.raises(InputError, match="method"):
        P.from_row(Example, {"method": "medium"})
    with pytest.raises(InputError, match="smooth"):
        P.from_row(Example, {"smooth": "perhaps"})


def test_enhancement_parameters_come_from_their_declaration():
    columns = P.batch_columns(EnhancementParameters)
    assert {"preset", "spacing", "denoise", "bias_correct", "bias_method", "normalize", "crop"} <= set(columns)
    parameters = P.from_row(EnhancementParameters, {"preset": "none", "spacing": "1.5", "denoise": "gaussian",
                                                    "crop": "1"})
    assert parameters.preset is None and parameters.spacing_mm == (1.5, 1.5, 1.5)
    assert parameters.denoise == "gaussian" and parameters.crop_to_foreground
    with pytest.raises(InputError, match="denoise"):
        EnhancementParameters(denoise="blur").validate()


def test_monitoring_thresholds_are_declared_once():
    from MedAnalysisLib.batch import STEPS
    from MedAnalysisLib.cli import buildParser
    from MedAnalysisLib.core.longitudinal import MonitoringParameters, MonitoringThresholds
    from MedAnalysisLib.logic import monitoringlogic

    assert monitoringlogic.MonitoringParameters is MonitoringParameters  # no twin in the logic layer
    assert issubclass(MonitoringParameters, MonitoringThresholds)
    assert set(P.batch_columns(MonitoringParameters)) == set(STEPS["monitor"].columns)
    assert set(P.batch_columns(EnhancementParameters)) == set(STEPS["enhance"].columns)
    monitor = buildParser()._subparsers._group_actions[0].choices["monitor"]
    args = monitor.parse_args(["b.nii", "f.nii", "-o", "r", "--min-lesion-ml", "0.2", "--registration", "affine"])
    parameters = P.from_namespace(MonitoringParameters, args)
    assert parameters.min_lesion_ml == 0.2 and parameters.registrationPreset == "affine"
    assert parameters.relative_change == MonitoringParameters().relative_change == 0.25
    with pytest.raises(InputError, match="relative_change"):
        P.from_row(MonitoringParameters, {"relative_change": "nan"})
