"""The benchmark's v2 protocol targets: ratios within a round, medians over the rounds.
Nothing here times anything (tests/test_oip.py sends the v2 cells' real requests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is a folder of the repository, not an installed package

from bench import report  # noqa: E402
from bench.loadgen import Load  # noqa: E402
from bench.report import PYTRITON, SERVICE, Cell  # noqa: E402


def cell(server: str, case: str, rps: float, p99: float = 30.0) -> Cell:
    return Cell(server, case, 32, 1, Load(int(rps * 2), 2.0, 0, "", 1.0, 1.0, 2.0, p99), None)


def round_(encode: float, v2: float, triton: float | None, grpc: float = 900) -> report.Round:
    return report.Round(
        encode=cell(SERVICE, "encode-npy", encode),
        v2=cell(SERVICE, "v2-binary", v2),
        triton=None if triton is None else cell(PYTRITON, "v2-binary", triton),
        grpc=cell(SERVICE, "v2-grpc", grpc),
        triton_grpc=None if triton is None else cell(PYTRITON, "v2-grpc", 700),
    )


def test_the_protocol_targets_are_medians_of_per_round_ratios() -> None:
    rounds = [round_(2000, 1900, 1000), round_(1800, 1500, 1200), round_(2200, 2100, 1300)]
    versus_triton, versus_npy = report.protocol_targets(rounds)
    assert versus_triton.ratio == pytest.approx(2100 / 1300) and versus_triton.met  # the median
    assert "ratio per round 1.90, 1.25, 1.62" in versus_triton.measured
    assert versus_npy.ratio == pytest.approx(0.95) and versus_npy.met  # 0.95, 0.83, 0.95
    table = report.protocol_table(rounds)
    assert table[-1] == (
        "| 3 | 2,200 (30.0) | 2,100 (30.0) | 1,300 (30.0) | 900 (30.0) | 700 (30.0) |"
    )


def test_without_pytriton_its_target_is_not_measured_rather_than_missed() -> None:
    versus_triton, versus_npy = report.protocol_targets([round_(2000, 1700, None)])
    assert versus_triton.met is None and versus_triton.measured == "not measured"
    assert versus_npy.met is False and versus_npy.ratio == pytest.approx(0.85)
    assert report.protocol_table([round_(2000, 1700, None)])[-1].endswith("| - |")
