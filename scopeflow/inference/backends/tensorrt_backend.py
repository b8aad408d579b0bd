"""TensorRT on an NVIDIA GPU: an FP16 engine built from the shipped ONNX file, cached.

Written against the TensorRT 10 Python API (``Builder``/``OnnxParser``/named-tensor execution
with ``execute_async_v3``). Device buffers are torch CUDA tensors, so no extra CUDA binding is
needed. Engines are cached per GPU, compute capability, TensorRT version and ONNX file hash in
``~/.cache/scopeflow/tensorrt`` (``SCOPEFLOW_TRT_CACHE`` overrides it). Dynamic input shapes use
the optimisation profile in the model's metadata (``tensorrt_profile``: min/opt/max per input),
else the example input's shape. On machines without TensorRT or a GPU, :meth:`available` says so
and :meth:`load` raises :class:`BackendUnavailable`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference.backends.base import check_inputs, model_path
from scopeflow.inference.models.registry import model_metadata, model_module

WORKSPACE_BYTES = 1 << 30


def cache_dir() -> Path:
    return Path(
        os.environ.get("SCOPEFLOW_TRT_CACHE", Path.home() / ".cache" / "scopeflow" / "tensorrt")
    )


class TensorRTSession:
    """A deserialised engine and its execution context."""

    backend = "tensorrt"

    def __init__(self, model: str, engine: Any, trt: Any, torch: Any) -> None:
        self.model = model
        self._trt, self._torch = trt, torch
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = engine.get_tensor_mode
        self.input_names = tuple(n for n in names if mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if mode(n) == trt.TensorIOMode.OUTPUT)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self.input_names, inputs)
        torch, ctx = self._torch, self._context
        keep = []
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).cuda()
            keep.append(tensor)
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            dtype = _torch_dtype(torch, self._engine.get_tensor_dtype(name), self._trt)
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            ctx.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.model} failed")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outputs.items()}


def _torch_dtype(torch: Any, trt_dtype: Any, trt: Any) -> Any:
    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
    }[trt_dtype]


class TensorRTBackend:
    """Builds (or reuses) an FP16 engine per model and GPU."""

    name = "tensorrt"

    def available(self) -> tuple[bool, str]:
        try:
            import tensorrt as trt
        except ImportError:
            return False, (
                "tensorrt is not installed (pip install -e '.[gpu]' on a machine "
                "with an NVIDIA GPU)"
            )
        try:
            import torch
        except ImportError:
            return False, "the TensorRT backend uses torch CUDA tensors as buffers; install torch"
        if not torch.cuda.is_available():
            return False, f"tensorrt {trt.__version__} is installed but no CUDA GPU is visible"
        return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name(0)}"

    def load(self, model: str, weights_dir: Path | None = None) -> TensorRTSession:
        onnx_path = model_path(self, model, ".onnx", weights_dir)
        import tensorrt as trt
        import torch

        logger = trt.Logger(trt.Logger.WARNING)
        engine_path = self._engine_path(onnx_path, trt, torch)
        if not engine_path.exists():
            engine_path.parent.mkdir(parents=True, exist_ok=True)
            data = self._build(model, onnx_path, logger, trt, weights_dir)
            tmp = engine_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(engine_path)  # atomic: a concurrent loader never reads half an engine
        engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"could not deserialise {engine_path}; delete it to rebuild")
        return TensorRTSession(model, engine, trt, torch)

    @staticmethod
    def _engine_path(onnx_path: Path, trt: Any, torch: Any) -> Path:
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
        major, minor = torch.cuda.get_device_capability(0)
        gpu = torch.cuda.get_device_name(0).replace(" ", "_").replace("/", "_")
        return (
            cache_dir()
            / f"{gpu}-sm{major}{minor}-trt{trt.__version__}"
            / (f"{onnx_path.stem}-{digest}-fp16.engine")
        )

    @staticmethod
    def _build(
        model: str, onnx_path: Path, logger: Any, trt: Any, weights_dir: Path | None
    ) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        shapes = _profile_shapes(model, weights_dir)
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            lo, opt, hi = shapes[tensor.name]
            profile.set_shape(tensor.name, lo, opt, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build an engine for {model}")
        return bytes(serialized)


def _profile_shapes(model: str, weights_dir: Path | None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shape per input: from the metadata, else the example input, fixed."""
    meta = model_metadata(model, weights_dir)
    if "tensorrt_profile" in meta:
        return {k: tuple(tuple(s) for s in v) for k, v in meta["tensorrt_profile"].items()}
    examples = model_module(model).example_inputs(np.random.default_rng(0))
    return {k: (v.shape, v.shape, v.shape) for k, v in examples.items()}
