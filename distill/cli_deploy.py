"""`distill predict` and `distill export`: use a trained checkpoint (registered on distill.cli.app).

Torch-free, like distill/cli.py: the names, values and paths of both commands (and `distill bench --runtime`)
are checked here before torch is imported; the work is done in distill/predict.py and distill/export.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distill import config as C
from distill.cli_app import app
from distill.errors import UserError

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}  # format -> default file suffix
# What `distill bench --mode infer --runtime` times: eager torch, or the model exported in-process and read back.
RUNTIMES = {"torch": None, "onnxruntime": "onnx", "torchscript": "torchscript", "pt2": "pt2"}  # -> export format
# torch's ONNX exporter writes opsets 18-23 itself; it converts a lower one afterwards, which fails on Pad
# (measured with torch 2.14), so those are refused here instead of failing after the export.
OPSETS = C.Range(18, 23)
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


def require_checkpoint(path: Path) -> None:
    if not path.is_file():  # the same words as checkpoint.read_torch_file, which says it after torch is imported
        raise UserError(f"checkpoint {path} not found: check the path")


def default_out(checkpoint: Path, fmt: str) -> Path:
    """Beside the checkpoint: best.pt -> best.onnx, best.torchscript.pt, best.pt2."""
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def sidecar_path(out: Path) -> Path:
    """Where an exported file's metadata goes: <file>.json beside it."""
    return out.with_name(out.name + ".json")


def check_out(out: Path, checkpoint: Path) -> None:
    if out.is_dir():
        example = out / default_out(checkpoint, "onnx").name
        raise UserError(f"--out {out} is a folder: name the model file, e.g. {example}")
    if sidecar_path(out).is_dir():
        raise UserError(f"{sidecar_path(out)} is a folder, where the sidecar of --out {out} goes: move that folder "
                        f"or choose another --out")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} of --out does not exist: create it or choose another --out")
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} is the checkpoint itself: choose another file name")


@app.command("predict")
def predict_command(
    checkpoint: Path = typer.Argument(..., help="best.pt or last.pt of any distill run (teacher, student, baseline)."),
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Image files, folders of images (searched "
                                       "recursively) or archives of them (.tar, .tar.gz, .tgz, .zip)."),
    top_k: int = typer.Option(3, "--top-k", help="Most probable classes to show per image (at most the checkpoint's "
                              "number of classes)."),
    json_out: bool = typer.Option(False, "--json", help='One JSON object per image and line: {"file": ..., "top": '
                                  '[{"class": ..., "probability": 0..1}, ...]}.'),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average predictions over the image and its mirror."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(64, help="Images decoded and classified at a time."),
) -> None:
    """Classify images with a checkpoint's own preprocessing (decoded like its training data). Exit code 0: every
    image classified; 1: some files could not be read (each named on stderr), the others were classified; 2: bad
    input (no images, a bad checkpoint or option)."""
    C.AT_LEAST_1.check("top_k", top_k)
    C.AT_LEAST_1.check("batch_size", batch_size)
    require_checkpoint(checkpoint)
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise UserError(f"{missing[0]} not found: pass image files, folders or archives that exist")
    from distill.predict import predict_paths, print_predictions

    rows = predict_paths(checkpoint, paths, top_k, tta, device, batch_size, print_json_line if json_out else None)
    if not json_out:
        print_predictions(rows)
    failed = sum(row["top"] is None for row in rows)
    if failed:
        others = "; the others were classified" if failed < len(rows) else ""
        raise UserError(f"{failed} of {len(rows)} files could not be read (named above){others}", exit_code=1)


def print_json_line(row: dict) -> None:
    print(json.dumps(row), flush=True)


@app.command("export")
def export_command(
    checkpoint: Path = typer.Argument(..., help="best.pt or last.pt of any distill run (teacher, student, baseline)."),
    fmt: str = typer.Option(..., "--format", help=f"{', '.join(FORMATS)}: ONNX (run it with onnxruntime), "
                            "TorchScript (torch.jit.load) or torch.export's .pt2 (torch.export.load)."),
    out: Optional[Path] = typer.Option(None, help="Model file to write (default beside the checkpoint: best.onnx, "
                                       "best.torchscript.pt or best.pt2); its metadata goes to <file>.json."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Accept any batch size (default: batch 1 "
                                       "only; TorchScript files accept any batch either way)."),
    opset: Optional[int] = typer.Option(None, help=f"ONNX opset, {int(OPSETS.low)}-{int(OPSETS.high)} (default "
                                        f"{DEFAULT_OPSET}); --format onnx only."),
) -> None:
    """Write a self-contained model file: uint8 RGB images (N, 3, S, S) in, class probabilities (N, C) out, with
    the checkpoint's preprocessing inside; written only if it matches the checkpoint (see the .json sidecar)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format '{fmt}': choose one of {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise UserError(f"--opset applies to --format onnx only (got --format {fmt}): drop --opset")
    OPSETS.check("opset", DEFAULT_OPSET if opset is None else opset)
    require_checkpoint(checkpoint)
    out = out or default_out(checkpoint, fmt)
    check_out(out, checkpoint)
    if fmt == "onnx":
        require_onnx("ONNX export")
    from distill.export import export_checkpoint, print_export

    meta = export_checkpoint(checkpoint, fmt, out, dynamic_batch, DEFAULT_OPSET if opset is None else opset)
    print_export(meta, out)
