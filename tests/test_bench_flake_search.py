"""The flake-search benchmark: its matching against the chip's truth, and the quick run in
process (the real job, the real simulator) with every field of its JSON."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("sklearn")  # the contrast-GMM baseline (lab extra)

from scopeflow_lab.bench.flake_search import (
    MONOLAYER_MIN_UM2,
    score_monolayers,
    truth_instances,
)
from scopeflow_lab.sim.optical.chip import Chip, ChipConfig

REGION = (-1000.0, -1000.0, 1000.0, 1000.0)


def _entry(x: float, y: float, cls: str, area: float) -> dict:
    return {"x_um": x, "y_um": y, "flake_class": cls, "area_um2": area}


def test_matching_counts_finds_misses_false_finds_and_duplicates():
    """Entries placed from the chip's own record: one on each true monolayer ≥ 50 µm² but the
    first, a second view of one of them, and one on bare substrate."""
    chip = Chip(ChipConfig(), seed=3)
    truths = truth_instances(chip, REGION)
    wanted = [t for t in truths if t.flake_class == "graphene_1L" and t.area_um2 >= 50]
    assert len(wanted) >= 3  # this chip region has some (from the simulator, not the code)
    flakes = [_entry(*t.centre_um, "graphene_1L", t.area_um2) for t in wanted[1:]]
    flakes.append(_entry(*wanted[1].centre_um, "graphene_1L", wanted[1].area_um2))  # twice
    # Bare substrate: a point farther than any object's radius from every object's centre.
    empty = next(
        (x, y)
        for x in range(-900, 900, 37)
        for y in range(-900, 900, 41)
        if all(
            math.dist((x, y), o.centre_um) > o.radius_um + 10
            for o in chip.objects_in(x - 100, y - 100, x + 100, y + 100)
        )
    )
    flakes.append(_entry(*empty, "graphene_1L", 80.0))
    flakes.append(_entry(5000.0, 5000.0, "graphene_1L", 80.0))  # outside the region: ignored
    m = score_monolayers(flakes, truths, REGION)
    n = len(wanted)
    assert (m["truth"], m["found"]) == (n, n - 1)
    assert m["recall"] == pytest.approx((n - 1) / n)
    assert m["catalogued"] == n + 1 and m["correct"] == n  # the duplicate is right, once more
    assert m["precision"] == pytest.approx(n / (n + 1))
    assert m["duplicates"] == 1
    assert m["missed_um"] == [[round(c, 1) for c in wanted[0].centre_um]]
    # The wrong class on a true monolayer matches nothing.
    other = score_monolayers([_entry(*wanted[0].centre_um, "graphene_2L", 80.0)], truths, REGION)
    assert other["found"] == 0 and other["catalogued"] == 0


def test_truth_instances_split_a_terraced_flake_by_class():
    chip = Chip(ChipConfig(terrace_fraction=1.0), seed=5)
    truths = truth_instances(chip, REGION)
    by_object: dict[int, list] = {}
    for t in truths:
        by_object.setdefault(t.object_id, []).append(t)
    split = [ts for ts in by_object.values() if len({t.flake_class for t in ts}) > 1]
    assert split  # terraces: one instance per class of one flake
    for t in truths:
        assert t.area_um2 > 0 and t.mask.any()
        x0, y0, x1, y1 = t.bbox_um
        assert x0 < x1 and y0 < y1


def test_the_quick_benchmark_runs_the_job_and_writes_every_field(tmp_path):
    from scopeflow_lab.bench.report import run_flake_search_bench

    out = tmp_path / "bench.json"
    lines: list[str] = []
    assert run_flake_search_bench(json_path=out, quick=True, progress=lines.append) == 0
    r = json.loads(out.read_text())
    assert r["quick"] is True and r["chip"]["scanned_mm"] == [1.0, 1.0]
    assert set(r["variants"]) == {"single", "single-serial", "gmm", "two-pass-10x"}
    for name, v in r["variants"].items():
        assert v["minutes_per_cm2"] > 0 and v["wall_s"] > 0, name
        assert 0 < v["minutes_per_cm2_without_rendering"] <= v["minutes_per_cm2"]
        assert set(v["shares"]) == {"stage", "focus", "frames", "detection_wait", "other"}
        assert all(0.0 <= s <= 1.0 for s in v["shares"].values()), v["shares"]
        assert sum(v["shares"].values()) == pytest.approx(1.0, abs=1e-6)
        assert v["shares"]["stage"] > 0 and v["shares"]["focus"] > 0
        assert v["tiles"] >= 1 and v["refocus_count"] >= 0 and v["flakes"] >= 0
        assert v["detector_frames"] >= v["tiles"] and v["detector_mpx_s_in_scan"] > 0
        m = v["monolayer_graphene"]
        assert m["truth"] == r["chip"]["monolayer_graphene_ge_50um2"]
        for key in ("recall", "precision"):
            assert m[key] is None or 0.0 <= m[key] <= 1.0
        assert m["duplicates"] >= 0 and m["found"] <= m["truth"]
    assert r["variants"]["gmm"]["detector"] == "contrast-gmm"
    assert r["variants"]["single-serial"]["serial_detection"] is True
    two = r["variants"]["two-pass-10x"]
    assert two["two_pass"] == "10x" and two["overview_tiles"] >= 1
    # Fewer, larger overview tiles than the 20× scan has (4× the field at 10×).
    assert two["overview_tiles"] < r["variants"]["single"]["tiles"]
    assert r["detector_mpx_s_standalone"] > 0 and r["gmm"]["fit_s"] > 0
    rv = r["revisit"]
    assert rv["selected"] >= 1 and rv["found"] <= rv["selected"]
    if rv["found"]:
        assert 0 <= rv["position_error_um_median"] <= rv["position_error_um_max"] <= 10.0
    assert r["targets"] == {"minutes_per_cm2": 1.5, "detector_mpx_s": 23.0}
    assert any(line.startswith("single ") for line in lines)  # the table was printed
    assert MONOLAYER_MIN_UM2 == 50.0
