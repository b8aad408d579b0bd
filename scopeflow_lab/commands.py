"""The lab's commands on the ``scopeflow`` command line: simulate, train, export, bench.

Registered in the ``scopeflow.commands`` entry-point group; the runtime's CLI calls
:func:`add_commands` with its sub-parsers, so it never imports the lab by name.
"""

from __future__ import annotations

from pathlib import Path


def _cmd_simulate(args) -> int:
    from scopeflow_lab.datasets.sources import dataset_source
    from scopeflow_lab.datasets.writer import write_dataset

    source = dataset_source(args.kind, args.seed, args.ideal)
    out = args.out or Path("runs") / f"simulate-{args.kind}-seed{args.seed}"
    print(
        f"scopeflow simulate {args.kind}: {args.n} images, seed {args.seed}"
        f"{' (ideal)' if args.ideal else ''} → {out}/"
    )
    summary = write_dataset(
        source, args.n, out, fmt=args.format, run_info={"seed": args.seed, "ideal": args.ideal}
    )
    print(
        f"  wrote {summary['images']} images, {summary['annotations']} annotations"
        f"{', ' + str(summary['tracks']) + ' tracks' if summary['tracks'] else ''}"
        f" ({', '.join(summary['categories']) or 'no objects'}) in {summary['seconds']:.1f} s"
    )
    print(f"  {out}/annotations.json, metadata.json, contact_sheet.png")
    return 0


def _cmd_train(args) -> int:
    import importlib

    _require_lab_extra("train", "torch", "onnx")

    out = args.out or Path("runs") / f"train-{args.model}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    trainer = importlib.import_module(f"scopeflow_lab.training.{args.model}")
    print(
        f"scopeflow train {args.model} (seed {args.seed}{', quick' if args.quick else ''}) → {out}/"
    )
    metrics = trainer.train(out, seed=args.seed, quick=args.quick)
    print(f"  wrote {out / (args.model + '.pt')}, loss_curve.png, metrics.json")
    print(
        "  "
        + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
            if not isinstance(v, (dict, list))
        )
    )
    return 0


def _cmd_export(args) -> int:
    _require_lab_extra("export", "torch", "onnx")
    from scopeflow.inference.models.registry import WEIGHTS_DIR
    from scopeflow_lab.training.export import export_onnx, ship

    if args.run is not None:
        diff = ship(args.model, args.run)
        print(
            f"shipped {args.run / (args.model + '.pt')} → {WEIGHTS_DIR}/{args.model}"
            f".{{pt,onnx,json}}; max |ONNX − torch| = {diff:.2e} on the example inputs"
        )
        return 0

    weights = args.weights or WEIGHTS_DIR / f"{args.model}.pt"
    out = args.out or weights.with_suffix(".onnx")
    diff = export_onnx(args.model, weights, out)
    print(f"exported {weights} → {out}; max |ONNX − torch| = {diff:.2e} on the example inputs")
    return 0


def _cmd_bench_models(args) -> int:
    from scopeflow_lab.bench.report import run_models_bench

    return run_models_bench(json_path=args.json, quick=args.quick, only=args.only)


def _require_lab_extra(command: str, *modules: str) -> None:
    """Exit with a clear message when a benchmark's lab-extra dependencies are missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"scopeflow {command} needs {', '.join(missing)} from the lab "
            "extra: pip install -e '.[lab]' (or run it through make bench)"
        )


def _cmd_bench_autofocus(args) -> int:
    from scopeflow_lab.bench.report import run_autofocus_bench

    _require_lab_extra("bench autofocus", "mapfost", "scipy", "skimage")

    return run_autofocus_bench(trials=args.trials, json_path=args.json, quick=args.quick)


def _cmd_bench_aenet_response(args) -> int:
    from scopeflow_lab.bench.report import run_aenet_response_bench

    if args.trials < 3:
        raise SystemExit("--trials must be at least 3 (every third trial is held out)")
    _require_lab_extra("bench aenet-response", "scipy")
    return run_aenet_response_bench(trials=args.trials, seed=args.seed, json_path=args.json)


def _cmd_bench_recorder(args) -> int:
    from scopeflow_lab.bench.recorder import run_recorder_bench

    _require_lab_extra("bench recorder", "zarr")
    return run_recorder_bench(json_path=args.json, seconds=args.seconds, quick=args.quick)


def _cmd_bench_insitu(args) -> int:
    from scopeflow_lab.bench.insitu import run_insitu_bench

    _require_lab_extra("bench insitu", "motmetrics", "zarr")
    return run_insitu_bench(json_path=args.json, quick=args.quick, only=args.only)


def _cmd_bench_particles(args) -> int:
    from scopeflow_lab.bench.particles import run_particles_bench

    return run_particles_bench(json_path=args.json, quick=args.quick)


def _cmd_bench_transport(args) -> int:
    from scopeflow_lab.bench.report import run_transport_bench

    return run_transport_bench(json_path=args.json, quick=args.quick)


def _cmd_bench_flake_detector(args) -> int:
    from scopeflow_lab.bench.flake_detector import run_flake_detector_bench

    _require_lab_extra("bench flake-detector", "sklearn")
    return run_flake_detector_bench(json_path=args.json, quick=args.quick)


def _cmd_bench_simulate(args) -> int:
    from scopeflow_lab.bench.report import run_simulate_bench

    return run_simulate_bench(json_path=args.json, repeats=args.repeats)


def _cmd_bench_flake_search(args) -> int:
    from scopeflow.jobs.flake_search import chip_region
    from scopeflow_lab.bench.report import run_flake_search_bench

    _require_lab_extra("bench flake-search", "sklearn")  # the contrast-GMM baseline
    x0, y0, x1, y1 = chip_region(args.chip_mm)  # a UsageError names a malformed W,H
    chip_mm = ((x1 - x0) / 1e3, (y1 - y0) / 1e3)
    return run_flake_search_bench(chip_mm=chip_mm, json_path=args.json, quick=args.quick)


def add_commands(sub) -> None:
    """Add simulate, train, export and bench to the ``scopeflow`` command line."""
    sim = sub.add_parser("simulate", help="write a simulated dataset with ground truth")
    sim.add_argument("kind", choices=["sem", "flakes", "insitu"])
    sim.add_argument("--n", type=int, default=16, help="images (insitu: consecutive frames)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/simulate-KIND-seedS)"
    )
    sim.add_argument(
        "--ideal",
        action="store_true",
        help="no noise, blur, vignetting or white balance (to check the physics)",
    )
    sim.add_argument(
        "--format",
        choices=["tiff", "png"],
        default=None,
        help="image files (default: TIFF for 16-bit, PNG for 8-bit)",
    )
    sim.set_defaults(func=_cmd_simulate)

    models = ["aenet", "acnet", "denoiser", "flake_detector", "particle_detector"]
    tr = sub.add_parser("train", help="train a model from the simulators (CPU, seeded)")
    tr.add_argument("model", choices=models)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", type=Path, default=None, help="default runs/train-MODEL-seedS")
    tr.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    tr.set_defaults(func=_cmd_train)

    ex = sub.add_parser("export", help="export a model's weights to ONNX (checked vs torch)")
    ex.add_argument("model", choices=models)
    ex.add_argument(
        "--weights", type=Path, default=None, help="state dict (default: the shipped MODEL.pt)"
    )
    ex.add_argument("--out", type=Path, default=None, help="ONNX file (default: beside weights)")
    ex.add_argument(
        "--run",
        type=Path,
        default=None,
        help="ship a training run directory into the package: copy MODEL.pt, "
        "write MODEL.json, export MODEL.onnx",
    )
    ex.set_defaults(func=_cmd_export)

    bench = sub.add_parser("bench", help="benchmarks that print tables and write JSON")
    benches = bench.add_subparsers(dest="bench", required=True)
    bt = benches.add_parser("transport", help="frame throughput and closed-loop latency")
    bt.add_argument("--json", type=Path, default=None, help="write results here")
    bt.add_argument("--quick", action="store_true", help="small sizes, few frames (smoke run)")
    bt.set_defaults(func=_cmd_bench_transport)
    bs = benches.add_parser("simulate", help="milliseconds per frame of each simulator")
    bs.add_argument("--json", type=Path, default=None, help="write results here")
    bs.add_argument("--repeats", type=int, default=20, help="timed frames per case")
    bs.set_defaults(func=_cmd_bench_simulate)
    bfd = benches.add_parser(
        "flake-detector",
        help="flake detector per oxide and lamp, in domain and held out, vs contrast-GMM; "
        "calibration gain from 5 tiles",
    )
    bfd.add_argument("--json", type=Path, default=None, help="write results here")
    bfd.add_argument("--quick", action="store_true", help="small tiles, few of them (smoke)")
    bfd.set_defaults(func=_cmd_bench_flake_detector)
    ba = benches.add_parser(
        "autofocus", help="AENet/ACNet autofocus vs search and MAPFoSt, and focus tracking"
    )
    ba.add_argument("--trials", type=int, default=200, help="seeded trials per method")
    ba.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write results here (and the figure beside it, .png)",
    )
    ba.add_argument("--quick", action="store_true", help="256² frames, short tracking (smoke)")
    ba.set_defaults(func=_cmd_bench_autofocus)
    br = benches.add_parser(
        "aenet-response",
        help="AENet's reading against the true |Δz|, "
        "and the fit of the autofocus model's response to it",
    )
    br.add_argument(
        "--trials",
        type=int,
        default=90,
        help="seeded trials (the trained families among them are used)",
    )
    br.add_argument(
        "--seed",
        type=int,
        default=43,
        help="trial seed (the autofocus benchmark's is 31: keep calibration off it)",
    )
    br.add_argument("--json", type=Path, default=None, help="write results here")
    br.set_defaults(func=_cmd_bench_aenet_response)
    bm = benches.add_parser("models", help="held-out metrics of every model vs baselines")
    bm.add_argument("--json", type=Path, default=None, help="write results here")
    bm.add_argument("--quick", action="store_true", help="few frames (smoke run)")
    bm.add_argument(
        "--only",
        choices=["denoise-atomic"],
        default=None,
        help="denoise-atomic: the denoiser on atomic-resolution HRTEM and HAADF frames of the "
        "held-out multislice microscope, beside tuned BM3D, NLM and Gaussian",
    )
    bm.set_defaults(func=_cmd_bench_models)
    bf = benches.add_parser(
        "flake-search",
        help="the flake-search job end to end on a simulated chip: minutes per cm², where the "
        "time goes, monolayer P/R; pipelined, serial, contrast-GMM and two-pass in one run",
    )
    bf.add_argument("--json", type=Path, default=None, help="write results here")
    bf.add_argument("--chip-mm", default="10,10", help="W,H of the simulated chip (mm)")
    bf.add_argument("--quick", action="store_true", help="scan 1 × 1 mm (smoke run, ~1 min)")
    bf.set_defaults(func=_cmd_bench_flake_search)
    brec = benches.add_parser(
        "recorder",
        help="OME-Zarr writers compared, and the recorder end to end at 300 fps 512² and "
        "100 fps 1k²: frames produced vs recorded, overruns, memory",
    )
    brec.add_argument("--json", type=Path, default=None, help="write results here")
    brec.add_argument("--seconds", type=float, default=60.0, help="end-to-end run per camera mode")
    brec.add_argument("--quick", action="store_true", help="5 s per mode, few frames (smoke)")
    brec.set_defaults(func=_cmd_bench_recorder)
    bis = benches.add_parser(
        "insitu",
        help="the insitu job's sustained analysis rate (512², 1k²; 1 and 2 workers) and "
        "tracking accuracy (MOTA, IDF1, events) against truth and trackpy's own locate",
    )
    bis.add_argument("--json", type=Path, default=None, help="write results here")
    bis.add_argument("--quick", action="store_true", help="small frames, short runs (smoke)")
    bis.add_argument(
        "--only", choices=["tracking", "throughput"], default=None, help="run one part only"
    )
    bis.set_defaults(func=_cmd_bench_insitu)
    bpa = benches.add_parser(
        "particles",
        help="the particle detector per imaging condition: liquid TEM, atomic-resolution HRTEM "
        "and HAADF, and a held-out multislice microscope never trained on",
    )
    bpa.add_argument("--json", type=Path, default=None, help="write results here")
    bpa.add_argument("--quick", action="store_true", help="one small frame per row (smoke)")
    bpa.set_defaults(func=_cmd_bench_particles)
