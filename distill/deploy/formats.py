"""What an exported model is: its formats and file names, the runtimes `distill bench` times, the ONNX opsets.
Torch-free: the command line checks these before torch is imported, and deploy/export.py writes by them."""

from __future__ import annotations

from pathlib import Path

from distill.errors import UserError
from distill.front.options import Range

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}  # format -> default file suffix
# What `distill bench --mode infer --runtime` times: eager torch, or the model exported in-process and read back.
RUNTIMES = {"torch": None, "onnxruntime": "onnx", "torchscript": "torchscript", "pt2": "pt2"}  # -> export format
# torch's ONNX exporter writes opsets 18-23 itself; it converts a lower one afterwards, which fails on Pad
# (measured with torch 2.14), so those are refused here instead of failing after the export.
OPSETS = Range(18, 23)
DEFAULT_OPSET = 18  # the oldest it writes: the widest choice of runtimes
EXTRA_HINT = 'pip install -e ".[export]" (or pip install onnx onnxscript onnxruntime)'


def require_onnx(what: str) -> None:
    """One line naming the extra when onnx, onnxscript or onnxruntime is missing (none of them imports torch)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(f"{what} needs the export extra: {EXTRA_HINT}") from None


def parse_runtimes(values: list[str] | None) -> list[str]:
    """--runtime given repeated and/or comma-separated -> names in order, each once (default: torch)."""
    names = [n.strip() for v in values or ["torch"] for n in v.split(",") if n.strip()]
    bad = [n for n in names if n not in RUNTIMES]
    if bad or not names:
        raise UserError(f"unknown runtime '{bad[0] if bad else ''}': choose one of {', '.join(RUNTIMES)} "
                        f"(repeat --runtime or separate them with commas)")
    return list(dict.fromkeys(names))


def export_path(checkpoint: Path, fmt: str) -> Path:
    """Beside the checkpoint: best.pt -> best.onnx, best.torchscript.pt, best.pt2."""
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def sidecar_path(out: Path) -> Path:
    """Where an exported file's metadata goes: <file>.json beside it."""
    return out.with_name(out.name + ".json")
