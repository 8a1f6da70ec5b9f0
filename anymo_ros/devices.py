"""Devices, precision and the lifecycle of the learned backends (depth, semantics, SAM2 densifier).

* ``resolve_device('cuda:1')`` parses a device string and checks it can be used; where it cannot,
  it answers the CPU plus a sentence saying why.
* ``autocast(device, precision)`` is fp16/bf16 autocast on CUDA and a no-op elsewhere.
* ``release_memory()`` collects garbage and empties the CUDA cache after a model is dropped.
* ``RateScheduler(k)`` runs a heavy model on every k-th frame and hands out the last result in between.
* ``create_backends(config)`` builds and loads every backend the config asks for. It never raises:
  whatever cannot be had (a missing checkpoint, no CUDA, out of memory, a missing package) falls
  back to the embedded default (no depth model, no semantics, the flow densifier) and adds one
  human-readable reason to the list it returns, for the node to log once and put in diagnostics.

torch is imported lazily, so importing this module stays light.
"""
from __future__ import annotations

import contextlib
import gc
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from anymo_ros.config import SegmenterConfig

PRECISIONS = ("fp32", "fp16", "bf16")
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".onnx")


class BackendUnavailable(RuntimeError):
    """A backend cannot be used; the message is the human-readable reason."""


# ---------------------------------------------------------------------------------- devices
def parse_device(text: str) -> tuple[str, int | None]:
    """'cpu' -> ('cpu', None); 'cuda' -> ('cuda', None); 'cuda:1' -> ('cuda', 1). Raises ValueError."""
    match = _DEVICE_PATTERN.match(str(text).strip().lower())
    if not match:
        raise ValueError(f"device '{text}' is not one of 'cpu', 'cuda' or 'cuda:N'")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu" and index is not None:
        raise ValueError(f"device '{text}': the CPU takes no index")
    return kind, None if index is None else int(index)


def resolve_device(text: str) -> tuple["torch.device", str | None]:
    """The torch device to use for ``text`` and, where it had to fall back to the CPU, why."""
    import torch

    try:
        kind, index = parse_device(text)
    except ValueError as error:
        return torch.device("cpu"), f"{error}; running on cpu"
    if kind == "cpu":
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        return torch.device("cpu"), (f"device '{text}' requested but CUDA is unavailable "
                                     f"({cuda_unavailable_reason()}); running on cpu")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        return torch.device("cpu"), (f"device '{text}' requested but only {count} CUDA device(s) are visible "
                                     f"(cuda:0..cuda:{count - 1}); running on cpu")
    return torch.device("cuda", index if index is not None else torch.cuda.current_device()), None


def cuda_unavailable_reason() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is built without CUDA"
    try:
        count = torch.cuda.device_count()
    except Exception as error:  # noqa: BLE001 - any driver error is the reason itself
        return f"the CUDA driver failed: {_first_line(error)}"
    if count == 0:
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU or no working driver"
    return "torch.cuda.is_available() is False"


def resolve_precision(precision: str, device: "torch.device") -> tuple[str, str | None]:
    """The precision actually used: fp32 on the CPU, fp16 where bf16 is unsupported."""
    import torch

    if precision not in PRECISIONS:
        return "fp32", f"precision '{precision}' is not one of {', '.join(PRECISIONS)}; using fp32"
    if device.type != "cuda" or precision == "fp32":
        return "fp32", None
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", f"{torch.cuda.get_device_name(device)} has no bf16 support; using fp16"
    return precision, None


def autocast(device: "torch.device | str", precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision autocast on CUDA for 'fp16'/'bf16'; a no-op on the CPU or for 'fp32'."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def release_memory() -> None:
    """Give freed model memory back: garbage-collect, then empty the CUDA cache if there is one."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, (RuntimeError, MemoryError)) and (
        isinstance(error, MemoryError) or "out of memory" in str(error).lower())


def checkpoint_source(model: str, what: str) -> str:
    """What to hand to ``from_pretrained``: an existing local directory, or a hub model id.

    A string that names a path (starts with '/', '.', '~', or ends like a checkpoint file) but does
    not exist raises BackendUnavailable naming it, rather than being sent to the hub.
    """
    text = str(model).strip()
    if not text:
        raise BackendUnavailable(f"no {what} checkpoint configured")
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            raise BackendUnavailable(f"{what} checkpoint '{text}' is a file; give the directory written by "
                                     "save_pretrained (config.json and weights) or a Hugging Face model id")
        return str(path)
    if text.startswith(("/", ".", "~")) or text.lower().endswith(_CHECKPOINT_SUFFIXES) or text.count("/") > 1:
        raise BackendUnavailable(f"{what} checkpoint path '{text}' does not exist")
    return text


# ---------------------------------------------------------------------------------- backends
class ModelBackend(ABC):
    """A learned model with an explicit lifecycle: ``load()`` on configure/activate, ``release()``
    on deactivate/cleanup. ``load`` raises BackendUnavailable (or the library's error) on failure."""

    kind: str = "model"      # 'depth', 'semantics' or 'densify'
    name: str = "model"      # backend name as in the config

    def __init__(self, device: "torch.device | str" = "cpu", precision: str = "fp32"):
        import torch

        self.device = torch.device(device)
        self.precision = precision
        self.model = None

    @property
    def loaded(self) -> bool:
        """True while the model is in memory."""
        return self.model is not None

    @abstractmethod
    def load(self) -> None:
        """Bring the model into memory on ``self.device``; a no-op when loaded."""

    @abstractmethod
    def drop(self) -> None:
        """Let go of the model (no garbage collection); ``load`` brings it back."""

    def release(self) -> None:
        """Drop the model and give its memory back; ``load`` brings it back."""
        self.drop()
        release_memory()

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)


class RateScheduler:
    """Run a heavy stage on every k-th frame, reuse its last result in between.

    ``run(fn, *args)`` calls ``fn`` on frames 0, k, 2k, ... of the stream (and always when there is
    no result yet); ``rates()`` reports how often it actually ran.
    """

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"a stage must run every k >= 1 frames, got {every}")
        self.every = int(every)
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.runs = 0
        self.fresh = False
        self.last: Any = None
        self._countdown = 0

    def due(self) -> bool:
        """Whether the next ``run`` calls its function."""
        return self._countdown <= 0 or self.last is None

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.due():
            self.last = fn(*args, **kwargs)
            self.runs += 1
            self.fresh = True
            self._countdown = self.every
        else:
            self.fresh = False
        self._countdown -= 1
        self.frames += 1
        return self.last

    def rates(self) -> dict[str, float]:
        return {"every": float(self.every), "frames": float(self.frames), "runs": float(self.runs),
                "run_fraction": self.runs / self.frames if self.frames else 0.0}


@dataclass
class Backends:
    """The learned backends of one pipeline, and what was given up for what reason.

    ``depth`` is a depth model (``.estimate(rgb)``) or a sensor converter (``.convert(...)``) or None;
    ``semantics`` a DINOv2 feature extractor or None; ``segmenter`` + ``prompting`` the SAM2/EdgeTAM
    densifier or None (then the flow densifier runs).
    """

    device: "torch.device"
    precision: str
    depth: Any = None
    semantics: Any = None
    segmenter: Any = None
    prompting: Any = None
    depth_rate: RateScheduler = field(default_factory=lambda: RateScheduler(1))
    semantics_rate: RateScheduler = field(default_factory=lambda: RateScheduler(1))
    problems: list[str] = field(default_factory=list)

    @property
    def names(self) -> dict[str, str]:
        """Backend actually in use per stage, for diagnostics."""
        return {
            "depth": getattr(self.depth, "name", "none"),
            "semantics": getattr(self.semantics, "name", "none"),
            "densify": getattr(self.segmenter, "name", "flow"),
            "device": str(self.device),
            "precision": self.precision,
        }

    def rates(self) -> dict[str, dict[str, float]]:
        return {"depth": self.depth_rate.rates(), "semantics": self.semantics_rate.rates()}

    def models(self) -> list[ModelBackend]:
        return [b for b in (self.depth, self.semantics, self.segmenter) if isinstance(b, ModelBackend)]

    def load(self) -> list[str]:
        """(Re)load every model (after ``release``); failures fall back as in ``create_backends``."""
        problems = []
        for backend in self.models():
            if backend.loaded:
                continue
            try:
                backend.load()
            except Exception as error:  # noqa: BLE001 - any failure means the fallback
                problems.append(self.disable(backend.kind, error, loading=True))
        return problems

    def release(self) -> None:
        for backend in self.models():
            backend.drop()
        if self.prompting is not None:
            self.prompting.reset()
        self.depth_rate.reset()
        self.semantics_rate.reset()
        release_memory()

    def reset(self) -> None:
        """A new stream (scene cut, bag loop): forget per-stream state, keep the models loaded."""
        if self.prompting is not None:
            self.prompting.reset()
        self.depth_rate.reset()
        self.semantics_rate.reset()

    def disable(self, kind: str, error: BaseException | str, loading: bool = False) -> str:
        """Switch stage ``kind`` to its fallback after ``error``; returns the reason (also kept in problems)."""
        backend = {"depth": self.depth, "semantics": self.semantics, "densify": self.segmenter}.get(kind)
        name = getattr(backend, "name", kind)
        model = getattr(backend, "model_source", "")
        reason = describe_failure(kind, name, model, self.device, error, loading)
        if isinstance(backend, ModelBackend):
            try:
                backend.drop()
            except Exception:  # noqa: BLE001 - releasing a broken model must not raise
                pass
        if kind == "depth":
            self.depth = None
        elif kind == "semantics":
            self.semantics = None
        elif kind == "densify":
            self.segmenter = None
            self.prompting = None
        release_memory()
        self.problems.append(reason)
        return reason


_FALLBACK = {"depth": "none", "semantics": "none", "densify": "flow"}


def describe_failure(kind: str, name: str, model: str, device: Any, error: BaseException | str,
                     loading: bool = True) -> str:
    """One sentence: which backend, why it failed, what runs instead."""
    if isinstance(error, str):
        detail = error
    elif isinstance(error, BackendUnavailable):
        detail = str(error)
    elif is_out_of_memory(error):
        detail = f"out of memory on {device} {'loading' if loading else 'running'} '{model or name}'"
    elif isinstance(error, ImportError):
        detail = f"a Python package is missing: {_first_line(error)}"
    elif isinstance(error, OSError) and loading:
        detail = (f"cannot load '{model}' (not a local directory, and not in the Hugging Face cache or on a "
                  f"reachable hub): {_first_line(error)}")
    else:
        detail = f"{type(error).__name__}: {_first_line(error)}"
    return f"{kind} backend '{name}' unavailable: {detail}; falling back to '{_FALLBACK.get(kind, 'none')}'"


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def create_backends(config: "SegmenterConfig", load: bool = True) -> tuple[Backends, list[str]]:
    """Build (and with ``load``, load) the backends ``config`` names. Never raises.

    Returns the backends and one reason per thing that could not be had; each failed stage runs
    its embedded default instead: depth 'none', semantics 'none', densify 'flow'. A device that
    cannot be used (no CUDA, bad index) means the CPU, with its reason.
    """
    device, problem = resolve_device(config.device)
    problems: list[str] = [problem] if problem else []
    precision, problem = resolve_precision(config.precision, device)
    if problem:
        problems.append(problem)
    backends = Backends(device=device, precision=precision,
                        depth_rate=RateScheduler(max(1, config.depth.every)),
                        semantics_rate=RateScheduler(max(1, config.semantics.every)))

    def build(kind: str, name: str, factory: Callable[[], Any]) -> Any:
        try:
            backend = factory()
            if load and isinstance(backend, ModelBackend):
                backend.load()
            return backend
        except Exception as error:  # noqa: BLE001 - never crash: fall back and say why
            problems.append(describe_failure(kind, name, _configured_model(config, kind), device, error))
            if is_out_of_memory(error):
                release_memory()   # what the failed load allocated
            return None

    depth_name = config.depth.backend
    if depth_name == "depth_anything":
        from anymo_ros.depth.depth_anything import DepthAnythingDepth
        backends.depth = build("depth", depth_name, lambda: DepthAnythingDepth(config.depth, device, precision))
    elif depth_name == "sensor":
        from anymo_ros.depth.sensor import SensorDepth
        backends.depth = SensorDepth()
    elif depth_name != "none":
        problems.append(describe_failure("depth", depth_name, "", device, BackendUnavailable(
            f"unknown depth backend '{depth_name}' (available: 'none', 'sensor', 'depth_anything')")))

    semantics_name = config.semantics.backend
    if semantics_name == "dinov2":
        from anymo_ros.semantics.dinov2 import DinoV2Semantics
        backends.semantics = build("semantics", semantics_name,
                                   lambda: DinoV2Semantics(config.semantics, device, precision))
    elif semantics_name != "none":
        problems.append(describe_failure("semantics", semantics_name, "", device, BackendUnavailable(
            f"unknown semantics backend '{semantics_name}' (available: 'none', 'dinov2')")))

    densify_name = config.densify.backend
    if densify_name in ("sam2", "edgetam"):
        from anymo_ros.densify.prompting import TwoStagePrompting
        from anymo_ros.densify.sam2 import Sam2VideoSegmenter
        backends.segmenter = build("densify", densify_name, lambda: Sam2VideoSegmenter(
            family=densify_name, model=config.sam2.model, device=device, precision=precision,
            conditioning_frames=config.sam2.conditioning_frames))
        if backends.segmenter is not None:
            backends.prompting = TwoStagePrompting(backends.segmenter, config.sam2)
    elif densify_name != "flow":
        problems.append(describe_failure("densify", densify_name, "", device, BackendUnavailable(
            f"unknown densify backend '{densify_name}' (available: 'flow', 'sam2', 'edgetam')")))

    backends.problems = list(problems)
    return backends, problems


def _configured_model(config: "SegmenterConfig", kind: str) -> str:
    if kind == "depth":
        return config.depth.model
    if kind == "semantics":
        return config.semantics.model
    if kind == "densify":
        from anymo_ros.densify.sam2 import default_model
        return config.sam2.model or default_model(config.densify.backend)
    return ""
