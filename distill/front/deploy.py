"""`distill predict` and `distill export`: use a trained checkpoint (registered on distill.front.cli.app).

Torch-free, like front/cli.py: the names, values and paths of both commands (and `distill bench --runtime`)
are checked here before torch is imported; the work is done in distill/deploy/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distill.front import config as C
from distill.front.app import app
from distill.deploy.formats import DEFAULT_OPSET, FORMATS, OPSETS, export_path, require_onnx, sidecar_path
from distill.errors import UserError

def require_checkpoint(path: Path) -> None:
    if not path.is_file():  # the same words as checkpoint.read_torch_file, which says it after torch is imported
        raise UserError(f"checkpoint {path} not found: check the path")


def check_export_path(out: Path, checkpoint: Path) -> None:
    if out.is_dir():
        example = out / export_path(checkpoint, "onnx").name
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
    from distill.deploy.predict import predict_paths, print_predictions

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
    out = out or export_path(checkpoint, fmt)
    check_export_path(out, checkpoint)
    if fmt == "onnx":
        require_onnx("ONNX export")
    from distill.deploy.export import export_checkpoint, print_export

    meta = export_checkpoint(checkpoint, fmt, out, dynamic_batch, DEFAULT_OPSET if opset is None else opset)
    print_export(meta, out)
