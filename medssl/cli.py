"""``medssl`` command line: study, pretrain, report, data, models, methods.

Errors from user input print one line (``medssl: error: ...``) and exit 2; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rich.console import Console

from medssl.errors import MedsslError
from medssl.io import check_writable_dir

console = Console()


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (``medssl: error: ...``, exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"medssl: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _add_config_args(p: argparse.ArgumentParser, config_required: bool) -> None:
    p.add_argument("config", nargs=None if config_required else "?", help="study YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set pretrain.epochs=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medssl", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("study", help="pretrain, then fine-tune at label fractions vs scratch")
    _add_config_args(p, config_required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue <name>.incomplete: keep finished cells, redo the killed one; on a "
                        "finished run, add the cells of new finetune.seeds or finetune.fractions")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells with their cost estimated from measured step times; run nothing")

    p = sub.add_parser("pretrain", help="pretrain an encoder only")
    _add_config_args(p, config_required=False)
    p.add_argument("--method", help="shortcut for --set pretrain.method=NAME")
    p.add_argument("--dataset", help="shortcut for --set data.dataset=FLAG")
    p.add_argument("--out", help="run directory (default: <output_dir>/<name>-pretrain)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    p = sub.add_parser("report", help="rewrite report.md and the plot from results.jsonl")
    p.add_argument("run_dir")

    data = sub.add_parser("data", help="datasets known and found locally")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dsub.add_parser("list", help="all known MedMNIST datasets")
    info = dsub.add_parser("info", help="facts and local files of one dataset")
    info.add_argument("flag")

    p = sub.add_parser("show-corruptions", help="PNG grid: original / each corruption [/ restored]")
    _add_config_args(p, config_required=False)
    p.add_argument("--dataset", help="shortcut for --set data.dataset=FLAG")
    p.add_argument("--out", default="corruptions.png", help="PNG path (default: corruptions.png)")
    p.add_argument("--checkpoint", help="a restorative run directory or its checkpoint.safetensors: "
                   "adds its corrupted input and restored output")
    p.add_argument("--corruptions", help="comma-separated subset of the corruptions (default: all)")
    p.add_argument("--n", type=_positive_int, default=4, help="examples (rows), evenly spaced test images")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("show-distortions", help="PNG: distorted regions, predicted types/boxes, restored "
                       "(a distortion_dense or distortion_maskrcnn run)")
    p.add_argument("checkpoint", help="the pretrain or study run directory, or its checkpoint.safetensors")
    p.add_argument("--out", default="distortions.png", help="PNG path (default: distortions.png)")
    p.add_argument("--n", type=_positive_int, default=4,
                   help="examples (rows), evenly spaced pretraining images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. data.path=... (repeatable)")

    p = sub.add_parser("export", help="encoder.safetensors + encoder.json + a checked encoder.onnx")
    p.add_argument("encoder", help="a pretrain or study run directory, or its encoder.safetensors")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-onnx", action="store_true", help="skip encoder.onnx (no onnx packages needed)")

    p = sub.add_parser("embed", help="features of every image as .npy (+ .json of what each row is)")
    p.add_argument("encoder", help="a pretrain or study run directory, or its encoder.safetensors")
    p.add_argument("data", help="a MedMNIST flag or .npz, a folder of images/NIfTI volumes, or a label CSV")
    p.add_argument("--out", required=True, help="features file FILE.npy (rows described in FILE.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward (default 256)")

    sub.add_parser("models", help="registered backbones")
    sub.add_parser("methods", help="registered pretext methods and their options")
    return parser


def _cmd_study(args: argparse.Namespace) -> None:
    from medssl.config import load_config
    from medssl.engine.dist import init_from_env, is_main
    from medssl.studies import run_study

    cfg = load_config(args.config, args.set)
    if args.dry_run:
        from medssl.studies.estimate import dry_run

        console.print(dry_run(cfg))
        return
    init_from_env(cfg.engine.device)  # torchrun: one process per GPU (or CPU share)
    check_writable_dir(Path(cfg.output_dir), "output_dir")
    run_dir = run_study(cfg, overwrite=args.overwrite, resume=args.resume)
    if is_main():
        from medssl.report.report import write_report

        report_figures(run_dir)
        write_report(run_dir)
        console.print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from medssl.config import load_config, save_config
    from medssl.engine.dist import init_from_env, is_main, on_main
    from medssl.studies import pretrain, pretrain_pool

    overrides = list(args.set)
    overrides += [f"pretrain.method={args.method.replace('-', '_')}"] if args.method else []
    overrides += [f"data.dataset={args.dataset}"] if args.dataset else []
    cfg = load_config(args.config, overrides)
    init_from_env(cfg.engine.device)  # torchrun: one process per GPU (or CPU share)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / f"{cfg.name}-pretrain"

    def check_out() -> None:
        if out.exists() and not out.is_dir():
            raise MedsslError(f"{out}: is a file, not a run directory; choose another --out")
        if out.exists() and not args.resume:
            raise MedsslError(f"{out}: run directory exists; pass --resume or choose --out")
        check_writable_dir(out, "--out")

    on_main(check_out)
    pool = pretrain_pool(cfg)
    on_main(lambda: (out.mkdir(parents=True, exist_ok=True), save_config(cfg, out / "config.yaml")))
    try:
        pretrain(cfg, pool, out, resume=args.resume)
    except KeyboardInterrupt:
        raise
    except Exception:
        if is_main() and not _has_checkpoint(out):  # nothing to resume from: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    if is_main():
        console.print(f"encoder: {out / 'encoder.safetensors'}")


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.safetensors").exists()


def _cmd_report(args: argparse.Namespace) -> None:
    from medssl.report.report import write_report

    run_dir = Path(args.run_dir)
    report_figures(run_dir)
    console.print(f"report: {write_report(run_dir)} and {run_dir / 'report.html'}")


def report_figures(run_dir: Path) -> None:
    """What the report shows but cannot compute from results alone (it never loads a model): each
    study's feature embedding and, for restorative methods, its corruption/restoration grid."""
    from medssl.config import load_config
    from medssl.inspection.corruption_grid import show_corruptions
    from medssl.methods import METHODS
    from medssl.studies.embedding import study_dirs, write_embedding

    if not (run_dir / "results.jsonl").is_file():
        return  # read_results names the missing file
    for study in study_dirs(run_dir):
        write_embedding(study)
        cfg = load_config(study / "config.yaml")
        grid, trained = study / "corruptions.png", study / "pretrain" / "checkpoint.safetensors"
        restores = hasattr(METHODS.get(cfg.pretrain.method, (None,))[0], "restore")
        if cfg.task == "classification" and restores and trained.is_file() and not grid.is_file():
            show_corruptions(None, [], grid, checkpoint=str(study))


def _cmd_data(args: argparse.Namespace) -> None:
    from medssl.data.cli_data import print_data_info, print_data_list

    if args.data_command == "list":
        print_data_list(console)
    else:
        print_data_info(console, args.flag)


def _cmd_show_corruptions(args: argparse.Namespace) -> None:
    from medssl.inspection.corruption_grid import show_corruptions

    overrides = list(args.set) + ([f"data.dataset={args.dataset}"] if args.dataset else [])
    names = [n.strip() for n in args.corruptions.split(",")] if args.corruptions else None
    check_writable_dir(Path(args.out).parent, "--out")
    out = show_corruptions(args.config, overrides, Path(args.out), args.n, names, args.checkpoint, args.seed)
    console.print(f"corruption grid: {out}")


def _cmd_show_distortions(args: argparse.Namespace) -> None:
    from medssl.inspection.distortion_viz import show_distortions

    check_writable_dir(Path(args.out).parent, "--out")
    out = show_distortions(args.checkpoint, Path(args.out), args.n, args.seed, args.set)
    console.print(f"distortion figure: {out}")


def _cmd_export(args: argparse.Namespace) -> None:
    from medssl.export import export_encoder

    for kind, path in export_encoder(args.encoder, Path(args.out), onnx=not args.no_onnx).items():
        console.print(f"{kind}: {path}")


def _cmd_embed(args: argparse.Namespace) -> None:
    from medssl.export import embed

    out = embed(args.encoder, args.data, Path(args.out), batch_size=args.batch_size, device=args.device)
    console.print(f"features: {out} (rows: {out.with_suffix('.json')})")


def _cmd_models(args: argparse.Namespace) -> None:
    from medssl.registry import backbone_names

    for name in backbone_names():
        console.print(name)


def _cmd_methods(args: argparse.Namespace) -> None:
    from medssl.methods import METHODS, method_defaults

    for name in sorted(METHODS):
        console.print(f"{name}: {method_defaults(name)}")


COMMANDS = {"study": _cmd_study, "pretrain": _cmd_pretrain, "report": _cmd_report,
            "data": _cmd_data, "models": _cmd_models, "methods": _cmd_methods,
            "show-corruptions": _cmd_show_corruptions, "show-distortions": _cmd_show_distortions,
            "export": _cmd_export, "embed": _cmd_embed}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except MedsslError as err:
        if args.debug:
            raise
        print(f"medssl: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a file system problem not foreseen above: still one line, naming the file
        if args.debug or not err.filename:
            raise
        print(f"medssl: error: {err.filename}: {err.strerror or type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medssl: interrupted", file=sys.stderr)
        return 130
    finally:
        if "medssl.engine.dist" in sys.modules:  # torch is imported only by commands that need it
            sys.modules["medssl.engine.dist"].shutdown()
    return 0


def one_line(text: str) -> str:
    """Collapse whitespace so that an error is always exactly one line."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
