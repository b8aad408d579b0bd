"""The ``scopeflow`` command line: jobs, nodes, the demo, the doctor and the benchmarks."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from scopeflow import __version__
from scopeflow.errors import ScopeflowError

DEFAULT_FRAMES = "tcp://127.0.0.1:5550"
DEFAULT_COMMANDS = "tcp://127.0.0.1:5551"
DEFAULT_RESULTS = "tcp://127.0.0.1:5552"


def _run_until_signalled(node) -> int:
    """Run a node in this process until SIGINT/SIGTERM, then shut it down cleanly."""

    def _stop(signum, _frame):
        logging.getLogger("scopeflow").info("signal %d: stopping %s", signum, node.rt.name)
        node.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.run()
    return 0


def _curve_server(args):
    from scopeflow.transport.endpoints import CurveServerKeys

    if bool(args.curve_secret) != bool(args.curve_clients):
        raise SystemExit("--curve-secret and --curve-clients go together")
    if not args.curve_secret:
        return None
    return CurveServerKeys(Path(args.curve_secret), Path(args.curve_clients))


def _cmd_node_acquire(args) -> int:
    from scopeflow.acquisition.node import AcquireConfig, AcquireNode
    from scopeflow.acquisition.sim_adapter import microscope_from_args
    from scopeflow.devices.registry import open_device

    microscope = open_device(args.device) if args.device else microscope_from_args(args)
    config = AcquireConfig(
        frames_endpoint=args.frames,
        commands_endpoint=args.commands,
        lossless_endpoint=args.lossless,
        mode=args.mode,
        frame_rate_hz=args.rate or (args.fps if args.sim == "insitu" else 10.0),
        curve=_curve_server(args),
        name=args.name,
    )
    node = AcquireNode(microscope, config, metrics_port=args.metrics_port)
    logging.getLogger("scopeflow").info(
        "acquire node ready: frames %s, commands %s%s",
        node.frames_endpoint,
        node.commands_endpoint,
        f", lossless {node.lossless_endpoint}" if args.lossless else "",
    )
    return _run_until_signalled(node)


def _cmd_node_infer(args) -> int:
    from scopeflow.inference.node import InferConfig, InferNode

    node = InferNode(
        InferConfig(
            frames_endpoint=args.frames,
            results_endpoint=args.results,
            model=args.model,
            backend=args.backend,
            acnet=not args.no_acnet,
            name=args.name,
        ),
        metrics_port=args.metrics_port,
    )
    logging.getLogger("scopeflow").info(
        "infer node ready: frames %s → results %s (%s)",
        args.frames,
        node.results_endpoint,
        f"{args.model} on {node.processor.backend}",
    )
    return _run_until_signalled(node)


def _cmd_demo(args) -> int:
    from scopeflow.demo import run_demo

    return run_demo(out_dir=args.out, seed=args.seed, evaluator=args.evaluator)


def _cmd_simulate(args) -> int:
    from scopeflow.datasets.sources import dataset_source
    from scopeflow.datasets.writer import write_dataset

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

    out = args.out or Path("runs") / f"train-{args.model}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    trainer = importlib.import_module(f"scopeflow.training.{args.model}")
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
    from scopeflow.inference.models.registry import WEIGHTS_DIR
    from scopeflow.training.export import export_onnx, ship

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
    from scopeflow.bench.report import run_models_bench

    return run_models_bench(json_path=args.json, quick=args.quick)


def _cmd_doctor(args) -> int:
    from scopeflow import doctor

    return doctor.main(as_json=args.json)


def _require_dev_extra(command: str, *modules: str) -> None:
    """Exit with a clear message when a benchmark's dev-extra dependencies are missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"scopeflow bench {command} needs {', '.join(missing)} from the dev "
            "extra: pip install -e '.[dev]' (or run it through make bench)"
        )


def _cmd_bench_autofocus(args) -> int:
    from scopeflow.bench.report import run_autofocus_bench

    _require_dev_extra("autofocus", "mapfost", "scipy", "skimage")

    return run_autofocus_bench(trials=args.trials, json_path=args.json, quick=args.quick)


def _cmd_bench_aenet_response(args) -> int:
    from scopeflow.bench.report import run_aenet_response_bench

    if args.trials < 3:
        raise SystemExit("--trials must be at least 3 (every third trial is held out)")
    _require_dev_extra("aenet-response", "scipy")
    return run_aenet_response_bench(trials=args.trials, seed=args.seed, json_path=args.json)


def _cmd_bench_transport(args) -> int:
    from scopeflow.bench.report import run_transport_bench

    return run_transport_bench(json_path=args.json, quick=args.quick)


def _cmd_bench_simulate(args) -> int:
    from scopeflow.bench.report import run_simulate_bench

    return run_simulate_bench(json_path=args.json, repeats=args.repeats)


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated microscope")
    g.add_argument(
        "--sim",
        choices=["sem", "optical", "insitu"],
        default="sem",
        help="sem: SEM for autofocus; optical: flake-chip microscope; "
        "insitu: TEM camera streaming on its own clock",
    )
    g.add_argument("--fps", type=float, default=10.0, help="insitu camera frame rate")
    g.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    g.add_argument("--family", default="nanoparticles", help="specimen family")
    g.add_argument("--frame-size", type=int, default=512, help="square frame side, px")
    g.add_argument("--pixel-size-nm", type=float, default=10.0)
    g.add_argument("--semiangle-mrad", type=float, default=3.0, help="beam convergence α")
    g.add_argument("--dose", type=float, default=50.0, help="electrons per pixel")
    g.add_argument(
        "--start-defocus-dof",
        type=float,
        default=0.0,
        help="initial WD − focus, in depth-of-field units",
    )
    g.add_argument("--astigmatism-um", type=float, default=0.0)
    g.add_argument("--focus-drift-um-per-s", type=float, default=0.0)
    g.add_argument(
        "--settle-s",
        type=float,
        default=None,
        help="focus (and stage) settle time, s (default: the simulator's)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scopeflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"scopeflow {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run one pipeline node in this process")
    nodes = node.add_subparsers(dest="role", required=True)

    acq = nodes.add_parser("acquire", help="a (simulated) microscope: frames out, commands in")
    acq.add_argument("--frames", default=DEFAULT_FRAMES, help="frame stream endpoint (bind)")
    acq.add_argument(
        "--commands",
        default=DEFAULT_COMMANDS,
        help="command endpoint (bind; loopback unless CURVE keys are given)",
    )
    acq.add_argument("--lossless", default=None, help="optional lossless PUSH endpoint (bind)")
    acq.add_argument("--mode", choices=["triggered", "continuous"], default="triggered")
    acq.add_argument(
        "--rate",
        type=float,
        default=None,
        help="frames/s in continuous mode (default: --fps for insitu, else 10)",
    )
    acq.add_argument("--metrics-port", type=int, default=None, help="Prometheus port")
    acq.add_argument("--curve-secret", default=None, help="server secret key file")
    acq.add_argument("--curve-clients", default=None, help="folder of authorised client keys")
    acq.add_argument("--name", default="acquire")
    acq.add_argument(
        "--device",
        default=None,
        metavar="SPEC",
        help="serve any registered adapter (e.g. sim:sem,seed=3 or mmcore:CFG) instead of --sim",
    )
    _add_sim_options(acq)
    acq.set_defaults(func=_cmd_node_acquire)

    inf = nodes.add_parser("infer", help="frames in, focus estimates out")
    inf.add_argument("--frames", default=DEFAULT_FRAMES, help="frame stream endpoint (connect)")
    inf.add_argument("--results", default=DEFAULT_RESULTS, help="results endpoint (bind)")
    inf.add_argument(
        "--model",
        "--evaluator",
        dest="model",
        default="normalized_variance",
        choices=[
            "normalized_variance",
            "tenengrad",
            "brenner",
            "aenet",
            "denoiser",
            "flake_detector",
            "particle_detector",
        ],
        help="classical focus metric or shipped model (--evaluator: alias)",
    )
    inf.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnxruntime", "torch", "tensorrt"],
        help="auto: tensorrt on an NVIDIA GPU, else onnxruntime",
    )
    inf.add_argument("--metrics-port", type=int, default=None, help="Prometheus port")
    inf.add_argument("--name", default="infer")
    inf.add_argument(
        "--no-acnet", action="store_true", help="with aenet: publish no ACNet proposals"
    )
    inf.set_defaults(func=_cmd_node_infer)

    from scopeflow.jobs.command import add_parsers as add_job_parsers

    add_job_parsers(sub)

    demo = sub.add_parser("demo", help="autofocus end to end on a simulated SEM")
    demo.add_argument("--out", type=Path, default=None, help="run folder (default runs/<time>)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--evaluator",
        default="aenet",
        choices=["aenet", "normalized_variance", "tenengrad", "brenner"],
        help="aenet (default): AENet/ACNet autofocus; a classical metric: the "
        "golden-section baseline",
    )
    demo.set_defaults(func=_cmd_demo)

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

    doc = sub.add_parser("doctor", help="versions, backends, CPU/GPU")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=_cmd_doctor)

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
    bm.set_defaults(func=_cmd_bench_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s",
    )
    try:
        return args.func(args)
    except ScopeflowError as exc:  # a user-facing problem: its reason, not a traceback
        print(f"scopeflow: error ({exc.code}): {exc.reason}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileExistsError) as exc:  # bad options, or data we would overwrite
        print(f"scopeflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
