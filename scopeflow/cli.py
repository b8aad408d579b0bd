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
    from scopeflow.devices.registry import open_device

    microscope = open_device(args.device or _sim_spec(args))
    config = AcquireConfig(
        frames_endpoint=args.frames,
        commands_endpoint=args.commands,
        lossless_endpoint=args.lossless,
        lossless_buffer_mb=args.lossless_buffer_mb,
        lossless_linger_s=args.lossless_linger_s,
        work_endpoint=args.work,
        mode=args.mode
        or ("continuous" if args.sim == "insitu" and not args.device else "triggered"),
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
    import os

    from scopeflow.inference.node import InferConfig, InferNode

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be at least 1")
        os.environ["SCOPEFLOW_THREADS"] = str(args.threads)  # read by the ONNX Runtime backend

    node = InferNode(
        InferConfig(
            frames_endpoint=args.frames,
            results_endpoint=args.results,
            model=args.model,
            backend=args.backend,
            acnet=not args.no_acnet,
            name=args.name,
            calibration=args.calibration,
            materials=tuple(args.materials.split(",")) if args.materials else None,
            oxide=args.oxide_nm,
            detect_pixel_nm=args.detect_pixel_nm,
            work_endpoint=args.work,
            max_rate_hz=args.max_rate,
            max_side=args.max_side,
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


def _cmd_node_record(args) -> int:
    from scopeflow.recording.recorder import RecordConfig, RecorderNode

    node = RecorderNode(
        RecordConfig(
            lossless_endpoint=args.lossless,
            out=args.out,
            frames_per_chunk=args.frames_per_chunk,
            name=args.name,
        ),
        metrics_port=args.metrics_port,
    )
    logging.getLogger("scopeflow").info(
        "record node ready: lossless %s → %s", args.lossless, args.out
    )
    code = _run_until_signalled(node)
    m = node.metrics
    lost, failed = m.value("frames_lost"), m.value("frames_not_recorded")
    print(
        f"recorded {m.value('frames_recorded')} frames to "
        f"{', '.join(map(str, node.datasets)) or 'nothing'}"
        + (f"; {lost} lost before the recorder" if lost else "")
        + (f"; {failed} not written (see the log)" if failed else "")
    )
    return 1 if (lost or failed) else code


def _cmd_demo(args) -> int:
    from scopeflow.demo import run_demo

    return run_demo(out_dir=args.out, seed=args.seed, evaluator=args.evaluator)


def _cmd_doctor(args) -> int:
    from scopeflow import doctor

    return doctor.main(as_json=args.json)


SIM_OPTIONS = (
    "seed", "family", "frame_size", "pixel_size_nm", "semiangle_mrad", "dose",
    "start_defocus_dof", "astigmatism_um", "focus_drift_um_per_s", "settle_s", "fps",
)  # fmt: skip


def _sim_spec(args) -> str:
    """The ``sim:`` scope spec the ``--sim`` options describe (the lab's simulator adapter)."""
    given = [f"{k}={getattr(args, k)}" for k in SIM_OPTIONS if getattr(args, k) is not None]
    return "sim:" + ",".join([args.sim, *given])


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


def _add_plugin_commands(sub) -> None:
    """Commands other packages add through the ``scopeflow.commands`` entry-point group (the
    lab's simulate, train, export and bench): the runtime never imports them by name."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="scopeflow.commands"):
        try:
            add = ep.load()
        except ImportError as exc:
            logging.getLogger("scopeflow").debug("command plug-in %s unavailable: %s", ep.name, exc)
            continue
        add(sub)


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
    acq.add_argument(
        "--work",
        default=None,
        help="optional lossless PUSH endpoint for analysis workers (bind; `node infer --work`): "
        "every frame, each to one of the workers connected",
    )
    acq.add_argument(
        "--lossless-linger-s",
        type=float,
        default=10.0,
        help="after the series ends, how long to wait for lossless consumers to take what is "
        "buffered (what is left is counted as overruns)",
    )
    acq.add_argument(
        "--lossless-buffer-mb",
        type=float,
        default=512.0,
        help="frames held for a slow or absent lossless consumer; past it a frame is not "
        "delivered and counted as an overrun (the camera is never slowed)",
    )
    acq.add_argument(
        "--mode",
        choices=["triggered", "continuous"],
        default=None,
        help="triggered: a frame per acquire command (autofocus); continuous: frames at --rate "
        "(a camera). Default: continuous for --sim insitu (a camera streams on its own clock), "
        "triggered otherwise",
    )
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
        "--work",
        default=None,
        metavar="ENDPOINT",
        help="every frame from an acquisition node's --work stream (connect) instead of the "
        "newest from --frames; N workers on one stream share its frames",
    )
    inf.add_argument(
        "--model",
        "--evaluator",
        dest="model",
        default="normalized_variance",
        metavar="MODEL[,MODEL]",
        help="classical focus metric (normalized_variance, tenengrad, brenner) or shipped model "
        "(aenet, denoiser, flake_detector, particle_detector); several comma-separated run in "
        "sequence on each frame, e.g. denoiser,particle_detector (--evaluator: alias)",
    )
    inf.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnxruntime", "torch", "tensorrt"],
        help="auto: tensorrt on an NVIDIA GPU, else onnxruntime",
    )
    inf.add_argument("--metrics-port", type=int, default=None, help="Prometheus port")
    inf.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the model (ONNX Runtime; default: every core); N workers on one "
        "host: cores / N",
    )
    inf.add_argument("--name", default="infer")
    inf.add_argument(
        "--no-acnet", action="store_true", help="with aenet: publish no ACNet proposals"
    )
    inf.add_argument(
        "--calibration",
        default=None,
        metavar="CAL",
        help="flake_detector: setup calibration from `scopeflow calibrate flake-detector`",
    )
    inf.add_argument(
        "--materials",
        default=None,
        metavar="M1,M2",
        help="flake_detector: the flake materials on the chip (graphene, hBN, MoS2, WSe2); "
        "default: any",
    )
    inf.add_argument(
        "--oxide-nm",
        default=None,
        metavar="NM|LO-HI|auto",
        help="flake_detector: the chip's SiO₂ thickness, a range to estimate it within, auto "
        "(the default without --calibration) or none; the physics prior calibrates the "
        "colours from the chip's own flakes",
    )
    inf.add_argument(
        "--detect-pixel-nm",
        type=float,
        default=None,
        metavar="NM",
        help="particle_detector: analyse frames finer than this binned to about it (default "
        "0.06, which keeps atomic lattice fringes; 1 analyses 0.5 nm/px liquid-cell frames at a "
        "quarter of the cost)",
    )
    inf.add_argument(
        "--max-rate",
        type=float,
        default=None,
        metavar="HZ",
        help="latest-only: analyse at most HZ frames a second, the newest each time (a display "
        "path beside every-frame workers, leaving them the cores); default: as fast as it goes",
    )
    inf.add_argument(
        "--max-side",
        type=int,
        default=None,
        metavar="PX",
        help="denoiser: bin frames larger than PX on a side by an integer factor first (a "
        "display path: the pixel size in the result's header follows)",
    )
    inf.set_defaults(func=_cmd_node_infer)

    rec = nodes.add_parser(
        "record", help="the lossless stream into an OME-Zarr v0.5 dataset (every frame)"
    )
    rec.add_argument(
        "--lossless",
        default="tcp://127.0.0.1:5553",
        help="an acquisition node's lossless endpoint (connect)",
    )
    rec.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the dataset, e.g. runs/x/rec.ome.zarr (must not exist; later series beside it)",
    )
    rec.add_argument(
        "--frames-per-chunk",
        type=int,
        default=None,
        help="frames per zarr chunk (default: about 8 MiB per chunk); a kill loses at most "
        "the chunk being filled",
    )
    rec.add_argument("--metrics-port", type=int, default=None, help="Prometheus port")
    rec.add_argument("--name", default="record")
    rec.set_defaults(func=_cmd_node_record)

    from scopeflow.jobs.command import add_parsers as add_job_parsers

    add_job_parsers(sub)
    from scopeflow.calibrate import add_parser as add_calibrate_parser

    add_calibrate_parser(sub)
    _add_plugin_commands(sub)

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

    doc = sub.add_parser("doctor", help="versions, backends, CPU/GPU")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=_cmd_doctor)

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
