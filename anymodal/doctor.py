"""``anymodal doctor``: what works on this machine, and how to get what does not.

Every optional part is *probed*, not assumed: a video backend counts only when it decodes a
test clip (TorchCodec imports without FFmpeg and fails at its first decode), an attention
backend only when it can run on the device asked, the EnCodec weights only when the file is
there. Nothing trains and nothing downloads; it takes a few seconds (importing torch is most of
it). One line per part: ``ok`` with its version, or ``--`` with the reason and how to get it::

    $ anymodal doctor
    core
      ok  python 3.11.7
      ok  torch 2.14.1
    ...
    video
      ok  decord 0.6.0 (auto picks it first)
      --  torchcodec: cannot decode a test clip (Could not load libtorchcodec: libavutil.so.61: ...)
          get it: pip install 'anymodal[video]' and install FFmpeg's libraries (apt-get install ffmpeg)

In Python::

    from anymodal.doctor import run_checks
    missing = [c for c in run_checks() if not c.ok]

The module imports nothing heavy at import time: ``anymodal --help`` stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass

#: (import name, distribution, how to get it, import it?) of the core packages. Native ones are
#: imported (a wheel for another ABI or a missing system library fails only there); pure-Python
#: ones are looked up without importing (lightning alone takes seconds to import)
_CORE = [
    ("torch", "torch", "pip install anymodal (the tested torch: see constraints.txt)", True),
    ("torchvision", "torchvision", "pip install anymodal", True),
    ("torchaudio", "torchaudio", "pip install anymodal", True),
    ("lightning", "lightning", "pip install anymodal", False),
    ("jsonargparse", "jsonargparse", "pip install anymodal", False),
    ("safetensors", "safetensors", "pip install anymodal", True),
    ("numpy", "numpy", "pip install anymodal", True),
    ("PIL", "pillow", "pip install anymodal", True),
    ("soundfile", "soundfile", "pip install anymodal (needs libsndfile; apt-get install libsndfile1 if it fails)",
     True),
    ("yaml", "pyyaml", "pip install anymodal", False),
]
#: (import name, distribution, what needs it, how to get it, import it?)
_OPTIONAL = [
    ("encodec", "encodec", "the audio.encodec tokenizer", "pip install 'anymodal[codec]'", True),
    ("tokenizers", "tokenizers", "the text.hf tokenizer", "pip install 'anymodal[hf]'", True),
    ("transformers", "transformers", "Hugging Face checkpoints and the benchmark peer", "pip install 'anymodal[hf]'",
     False),
    ("webdataset", "webdataset", "the webdataset data source", "pip install 'anymodal[webdataset]'", False),
    ("sacrebleu", "sacrebleu", "BLEU in anymodal eval", "pip install 'anymodal[eval]'", False),
    ("tensorboard", "tensorboard", "TensorBoard logs", "pip install anymodal", False),
    ("starlette", "starlette", "anymodal serve", "pip install 'anymodal[serve]'", False),
    ("uvicorn", "uvicorn", "anymodal serve", "pip install 'anymodal[serve]'", False),
]


@dataclass(frozen=True)
class Check:
    """One part: ``ok`` with ``detail`` = its version or use, else ``detail`` = why not and
    ``fix`` = how to get it."""

    section: str
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows): what benchmark and
    results tables say their numbers came from."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(module) -> str:
    v = getattr(module, "__version__", None) or getattr(module, "VERSION", None)
    if v is None:
        try:
            from importlib.metadata import version

            v = version(module.__name__)
        except Exception:  # noqa: BLE001 - a version is nice to have, not required
            v = ""
    return str(v)


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _package(section: str, module: str, shown: str, fix: str, use: str = "", load: bool = True) -> Check:
    needed = f"; needed for {use}" if use else ""
    if load:
        try:
            detail = _version(importlib.import_module(module))
        except Exception as e:  # noqa: BLE001 - ImportError, or a native library that does not load
            return Check(section, shown, False, f"cannot import {module} ({_one_line(e)}){needed}", fix)
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return Check(section, shown, False, f"cannot import {module} (not installed){needed}", fix)
        try:
            detail = version(shown)
        except PackageNotFoundError:
            detail = ""
    return Check(section, shown, True, f"{detail} ({use})" if use else detail)


def _core() -> list[Check]:
    out = [Check("core", "python", sys.version_info >= (3, 10), platform.python_version(),
                 "" if sys.version_info >= (3, 10) else "Python 3.10 or newer")]
    out += [_package("core", module, shown, fix, load=load) for module, shown, fix, load in _CORE]
    return out


def _video() -> list[Check]:
    from anymodal.media.video import (VIDEO_BACKEND_HINTS, VIDEO_BACKENDS, available_video_backends,
                                      video_backend_problem)

    out = []
    working = available_video_backends()
    for b in VIDEO_BACKENDS:
        why = video_backend_problem(b)
        if why is None:
            module = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec"}[b]
            note = "auto picks it first" if working and working[0] == b else "auto falls back to it"
            out.append(Check("video", b, True, f"{_version(importlib.import_module(module))} ({note})"))
        else:
            out.append(Check("video", b, False, why, VIDEO_BACKEND_HINTS[b]))
    ffmpeg = shutil.which("ffmpeg")
    out.append(Check("video", "system FFmpeg", ffmpeg is not None,
                     ffmpeg or "no ffmpeg on PATH (only TorchCodec needs it; decord and PyAV bundle their own)",
                     "" if ffmpeg else "apt-get install ffmpeg"))
    return out


def _audio() -> list[Check]:
    out = []
    try:
        import io

        import numpy as np
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.zeros(160, dtype=np.float32), 16000, format="WAV")
        buf.seek(0)
        sf.read(buf)
        out.append(Check("audio", "WAV/FLAC/Ogg (soundfile)", True, f"libsndfile {sf.__libsndfile_version__}"))
    except Exception as e:  # noqa: BLE001
        out.append(Check("audio", "WAV/FLAC/Ogg (soundfile)", False, f"cannot write and read a WAV ({_one_line(e)})",
                         "pip install soundfile (and apt-get install libsndfile1)"))
    try:
        import av

        out.append(Check("audio", "MP3/AAC/other (PyAV)", True, av.__version__))
    except Exception as e:  # noqa: BLE001
        out.append(Check("audio", "MP3/AAC/other (PyAV)", False, f"cannot import av ({_one_line(e)})",
                         "pip install 'anymodal[video]'"))
    return out


def _codec_weights() -> list[Check]:
    try:
        importlib.import_module("encodec")
    except Exception:  # noqa: BLE001 - reported with the packages
        return []
    from anymodal.tokenizers.audio_encodec import OFFICIAL_FILE, OFFICIAL_URL, _hub_checkpoints, official_weights

    file = official_weights()
    if file is not None:
        return [Check("weights", "EnCodec 24 kHz", True, str(file))]
    return [Check("weights", "EnCodec 24 kHz", False,
                  f"no {OFFICIAL_FILE} in {_hub_checkpoints()}: audio.encodec needs checkpoint=<file> "
                  "or random_init: true",
                  f"download {OFFICIAL_URL}, or python -c 'from encodec import EncodecModel; "
                  "EncodecModel.encodec_model_24khz()' (caches it)")]


def _attention(devices: list[str]) -> list[Check]:
    from anymodal.model.attention import BACKENDS, backend_support

    hints = {"flex": "a newer torch (FlexAttention: torch >= 2.5; on CPU it serves inference only)",
             "xformers": "pip install 'anymodal[xformers]' on a CUDA machine, built for this torch",
             "varlen": "torch with torch.nn.attention.varlen (FlashAttention varlen kernel) on CUDA"}
    from anymodal.model.attention import varlen_kernel_problem

    out = []
    for dev in devices:
        for name in BACKENDS:
            train_why, infer_why = backend_support(name, dev, True), backend_support(name, dev, False)
            if train_why is None:
                detail = "training and inference"
                if name == "varlen" and dev == "cuda":
                    kernel = varlen_kernel_problem(dev)
                    detail += (" (FlashAttention varlen kernel for bf16/fp16)" if kernel is None
                               else f" (padded SDPA buckets: the FlashAttention varlen kernel fails: {kernel})")
                out.append(Check("attention", f"{name} on {dev}", True, detail))
            elif infer_why is None:
                why = train_why.split(": ", 1)[-1]
                out.append(Check("attention", f"{name} on {dev}", True, f"inference only: {why}"))
            else:
                out.append(Check("attention", f"{name} on {dev}", False, infer_why, hints.get(name, "")))
    return out


def _gpu() -> tuple[list[Check], list[str]]:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return [Check("gpu", "CUDA", True, f"{torch.cuda.device_count()} x {name}, CUDA {torch.version.cuda}")], \
            ["cpu", "cuda"]
    why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device visible"
    return [Check("gpu", "CUDA", False, f"{why}; CPU runs use fp32 (bf16 matmul is ~100x slower on this CPU)",
                  "a machine with an NVIDIA GPU and torch's CUDA build (only for GPU recipes)")], ["cpu"]


def run_checks(device: str | None = None) -> list[Check]:
    """Probe every part and return one :class:`Check` each (nothing trains or downloads).

    ``device``: check the attention backends on this device only (default: ``cpu``, plus
    ``cuda`` when a GPU is visible).

    >>> [c.name for c in run_checks() if c.section == "video"]  # doctest: +SKIP
    ['decord', 'pyav', 'torchcodec', 'system FFmpeg']
    """
    checks = _core()
    if not all(c.ok for c in checks if c.name in ("torch", "numpy")):
        return checks  # nothing further can be probed without torch
    checks += _video() + _audio()
    checks += [_package("optional", module, shown, fix, use, load) for module, shown, use, fix, load in _OPTIONAL]
    checks += _codec_weights()
    gpu, devices = _gpu()
    checks += _attention([device] if device else devices) + gpu
    return checks


def format_report(checks: list[Check]) -> str:
    """The checks as text: a heading per section, ``ok``/``--`` per part, ``get it:`` lines."""
    lines, section = [], None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(section)
        if c.ok:
            lines.append(f"  ok  {c.name} {c.detail}".rstrip())
        else:
            lines.append(f"  --  {c.name}: {c.detail}")
            if c.fix:
                lines.append(f"      get it: {c.fix}")
    missing = [c for c in checks if not c.ok]
    core_missing = [c.name for c in missing if c.section == "core"]
    if core_missing:
        lines.append(f"core parts missing: {', '.join(core_missing)}: anymodal cannot run until they are installed")
    else:
        lines.append(f"core: ok; {len(missing)} optional part(s) not available here (see above)")
    return "\n".join(lines)


def doctor_main(args) -> int:
    """``anymodal doctor``: print the report; exit status 1 when a core part is missing."""
    checks = run_checks(getattr(args, "device", None))
    print(format_report(checks))
    if any(not c.ok and c.section == "core" for c in checks):
        raise SystemExit(1)
    return 0
