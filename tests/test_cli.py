"""The command line as a user runs it: doctor, node processes, the transport benchmark."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scopeflow.cli import build_parser
from scopeflow.errors import EndpointError

SF = [sys.executable, "-m", "scopeflow"]


def test_doctor_reports_versions_backends_and_hardware():
    res = subprocess.run([*SF, "doctor", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    for name in (
        "python",
        "pyzmq",
        "numpy",
        "backend onnxruntime",
        "backend torch",
        "backend tensorrt",
        "cpu",
        "gpu",
    ):
        assert name in checks
    assert checks["backend onnxruntime"]["ok"]
    assert "CPUExecutionProvider" in checks["backend onnxruntime"]["detail"]
    # No GPU on these machines: TensorRT must say why it is not usable.
    if not checks["gpu"]["ok"]:
        assert not checks["backend tensorrt"]["ok"]
        assert checks["backend tensorrt"]["detail"]


def test_bench_transport_quick_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [*SF, "--log-level", "WARNING", "bench", "transport", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "GB/s" in res.stdout and "loop latency" in res.stdout
    data = json.loads(out.read_text())
    rows = data["transport"]
    assert {r["endpoint"] for r in rows} == {"inproc", "ipc", "tcp"}
    for r in rows:
        assert r["dtype"] == "uint16" and len(r["frame_shape"]) == 2
        for key in ("frames_per_s", "gb_per_s", "pickle_gb_per_s", "memcpy_gb_per_s"):
            assert r[key] > 0
        # GB/s is frames/s × frame bytes.
        nbytes = r["frame_shape"][0] * r["frame_shape"][1] * 2
        assert abs(r["gb_per_s"] - r["frames_per_s"] * nbytes / 1e9) < 1e-6 * r["gb_per_s"]
    lat = data["loop_latency_ms"]
    assert lat["n"] >= 40 and 0 < lat["p50"] <= lat["p99"] <= lat["max"]


def test_nodes_refuse_a_public_command_endpoint_without_curve():
    res = subprocess.run(
        [
            *SF,
            "node",
            "acquire",
            "--commands",
            "tcp://0.0.0.0:5999",
            "--frames",
            "tcp://127.0.0.1:*",
            "--frame-size",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == EndpointError.exit_code == 7
    assert "CURVE" in res.stderr and "Traceback" not in res.stderr


def test_every_subcommand_has_help():
    parser = build_parser()
    for argv in (
        ["node", "acquire"],
        ["node", "infer"],
        ["run", "autofocus", "--scope", "sim:sem"],
        ["run", "scan", "--scope", "sim:optical"],
        ["run", "track-focus", "--scope", "remote:tcp://127.0.0.1:5551"],
        ["jobs"],
        ["demo"],
        ["doctor"],
        ["bench", "transport"],
        ["bench", "models"],
        ["train", "aenet"],
        ["export", "acnet"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.func)


def test_bench_simulate_writes_a_row_per_simulator(tmp_path):
    out = tmp_path / "sim.json"
    res = subprocess.run(
        [*SF, "bench", "simulate", "--repeats", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["case"]: r for r in json.loads(out.read_text())["simulate"]}
    assert {"chip tile 1920×1200 RGB", "insitu 1024²", "insitu 2048²"} <= set(rows)
    assert any(name.startswith("sem 1024²") for name in rows)
    for r in rows.values():
        assert r["ms_median"] > 0 and r["numpy_poisson_ms"] > 0
        assert r["frames_per_s"] == 1e3 / r["ms_median"]


def test_bench_models_quick_writes_the_documented_json(tmp_path):
    out = tmp_path / "models.json"
    res = subprocess.run(
        [*SF, "bench", "models", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    aenet = data["aenet"]
    for key in (
        "within_one_level",
        "spearman_abs_dz",
        "heldout_within_one_level",
        "max_score_change_under_gain_offset",
    ):
        assert isinstance(aenet[key], float)
    den = data["denoiser"]
    for modality in ("sem", "insitu"):
        for score in ("psnr", "ssim"):
            assert set(den[modality][score]) >= {"scopeflow", "bm3d", "nlm", "gaussian"}
    assert den["frames_per_s_512"] > 0
    for key in ("hrtem_100", "hrtem_1000", "haadf_10000"):  # the held-out atomic frames
        psnr = den["atomic_heldout"][key]["psnr"]
        assert set(psnr) >= {"scopeflow", "bm3d", "nlm", "gaussian", "noisy"}
        assert all(np.isfinite(v) and v > 5 for v in psnr.values())
    flakes = data["flake_detector"]
    assert set(flakes["graphene_1L"]) >= {"precision", "recall"}
    assert 0 <= flakes["layer_accuracy"] <= 1 and flakes["megapixels_per_s"] > 0
    assert flakes["baseline"]["name"] == "contrast-gmm"
    particles = data["particle_detector"]
    assert 0 <= particles["f1_iou50"] <= 1 and particles["baseline"]["name"] == "otsu"
    rows = {r["model"]: r for r in data["backends"]}
    assert set(rows) == {"aenet", "acnet", "denoiser", "flake_detector", "particle_detector"}
    for r in rows.values():
        assert r["torch_ms"] > 0 and r["onnxruntime_ms"] > 0 and r["max_abs_diff"] <= 1e-4


def test_bench_autofocus_quick_writes_the_documented_json_and_figure(tmp_path):
    out = tmp_path / "af.json"
    res = subprocess.run(
        [*SF, "bench", "autofocus", "--quick", "--trials", "3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["trials"] == 3
    assert set(data["methods"]) == {
        "scopeflow",
        "search-normalized-variance",
        "search-tenengrad",
        "mapfost",
        "scopeflow-aenet-only",
    }
    for name, m in data["methods"].items():
        for key in (
            "frames_median",
            "frames_p95",
            "success_rate",
            "final_error_dof_median",
            "final_error_dof_p95",
            "seconds_median",
        ):
            assert isinstance(m[key], float), (name, key)
        assert "success_rate_heldout" in m
        # Every trial of every method is in the rows, and the summary is computed from them.
        rows = data["rows"][name]
        assert len(rows) == 3
        assert m["frames_median"] == float(np.median([r["frames"] for r in rows]))
    assert data["mapfost_calibration"]["aperture_factor"] > 0
    for track in (data["tracking"], *data["tracking"]["tilted_specimen"].values()):
        assert 0 <= track["in_focus_fraction"] <= 1
        assert track["extra_frames_per_100"] >= 0
    assert data["inference_ms_512"]["total_ms"] > 0
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_aenet_response_writes_the_binned_curve_and_the_fit(tmp_path):
    out = tmp_path / "resp.json"
    res = subprocess.run(
        [*SF, "bench", "aenet-response", "--trials", "3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["readings"] == sum(b["n"] for b in data["bins"]) > 0
    assert (
        set(data["fitted"])
        == set(data["shipped"])
        == {"dead_zone_dof", "dead_zone_softness_dof", "dead_zone_reading_dof", "scale_floor"}
    )
    ll = data["log_likelihood"]
    # The fit starts from the shipped values and only climbs; AENet's real readings are
    # explained better with a dead zone than by the straight V.
    assert ll["fitted"] >= ll["shipped"] - 1e-6
    assert ll["shipped"] > ll["straight_v"]


def test_a_benchmark_missing_its_lab_extra_says_what_to_install():
    from scopeflow_lab.commands import _require_lab_extra

    _require_lab_extra("autofocus", "numpy")  # present: no exit
    with pytest.raises(SystemExit, match=r"no_such_module_x .*pip install -e '\.\[lab\]'"):
        _require_lab_extra("autofocus", "numpy", "no_such_module_x")
