"""The `deepfit` command: a thin layer that builds a config and calls the Python API.

The `train` options are generated from `TrainConfig`'s fields, so the CLI, the API and the saved
config.json always use the same names, defaults and help.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from deepfit.config import ALIASES, PRESETS, FeaturesConfig, TrainConfig, field_type, parse_model_args
from deepfit.errors import ConfigError, DeepfitError


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the nearest option for a typo, never accepts abbreviations,
    and reports errors in two lines instead of the whole usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def _all_options(self) -> list[str]:
        options = [s for a in self._actions for s in a.option_strings]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    options += [s for a in sub._actions for s in a.option_strings]
        return options

    def error(self, message: str) -> NoReturn:
        match = re.search(r"unrecognized arguments: (.*)", message)
        if match:
            known = self._all_options()
            hints = []
            for word in match.group(1).split():
                flag = word.split("=")[0]
                if flag.startswith("-"):
                    as_name = flag.lstrip("-").replace("-", "_")
                    alias = ALIASES.get(as_name)
                    close = ["--" + alias.replace("_", "-")] if alias else difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
                    hints.append(f"{flag}: did you mean {close[0]}?" if close else f"{flag}: no such option")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        self.exit(2, f"{self.prog}: error: {message}\nsee `{self.prog} --help` for the options\n")


def _add_config_options(parser: argparse.ArgumentParser, cls: type = TrainConfig, title: str | None = None) -> None:
    """One option per config field; defaults are suppressed so only what the user typed overrides a preset."""
    group = parser.add_argument_group(title or "training options (defaults shown are used unless a --preset sets them)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata['help']} (default: {default})"
        kind = field_type(f, cls)
        if f.name == "model_args":
            group.add_argument(flag, type=parse_model_args, default=argparse.SUPPRESS, help=help_text, metavar="K=V,...")
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            # choices are checked by TrainConfig, whose error suggests the nearest valid value
            choices = f.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, metavar=metavar)


def _add_label_options(parser: argparse.ArgumentParser) -> None:
    """How detection and segmentation labels are read (train and data check)."""
    parser.add_argument("--format", choices=["coco", "yolo", "voc", "masks", "folders", "yaml"],
                        help="the label format (default: recognised); detection: coco, yolo, voc, masks (instance PNGs); "
                        "segmentation: folders, yaml, coco")
    parser.add_argument("--classes", nargs="+", help="detection: class names in order (VOC, mask PNGs); segmentation: the names "
                        "of mask values 0, 1, 2, ...")
    parser.add_argument("--masks", help="segmentation: the folder of mask images, when DATA is the folder of images")
    parser.add_argument("--colors", help="segmentation: JSON file mapping class names to the [r, g, b] colours of colour-coded "
                        "masks (an entry named ignore: pixels that are not a class); default: inferred and printed")
    parser.add_argument("--skip-unmasked", action="store_true", help="segmentation: leave images without a mask out on purpose "
                        "(partly labelled data) instead of counting them as bad pairs")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deepfit", description="Train, evaluate and use image classifiers from labelled examples.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    q = sub.add_parser("quickstart", help="train, evaluate and report on the embedded handwritten digits")
    q.add_argument("--output", default="runs", help="folder for the run (default: runs)")

    t = sub.add_parser("train", help="train a classifier, detector, instance or semantic segmenter, from scratch or by transfer learning")
    t.add_argument(
        "data", nargs="?",
        help="classification: folder of class folders, folder with train/ val/ test/, or a CSV/TSV of path,label; "
        "detection: COCO JSON (or its folder), YOLO folder with its YAML, Pascal VOC folder, or images/ + masks/; "
        "segmentation: images/ + masks/ (or --masks DIR), a YAML naming them, or COCO JSON",
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue a stopped run from its resumable state (with --epochs N: extend a finished run to N epochs)",
    )
    t.add_argument("--preset", choices=sorted(PRESETS), help="a tested set of options to start from")
    t.add_argument("--path-column", help="CSV data: the column holding image paths")
    t.add_argument("--label-column", help="CSV data: the column holding labels")
    t.add_argument("--no-evaluate", action="store_true", help="do not score the test split after training")
    _add_label_options(t)
    _add_config_options(t)

    f = sub.add_parser(
        "features", help="fit a classical model (svm, logreg, knn, ridge) on a pretrained network's features, or export them",
    )
    f.add_argument("data", help="folder of class folders, folder with train/ val/ test/, or a CSV/TSV of path,label")
    f.add_argument("--path-column", help="CSV data: the column holding image paths")
    f.add_argument("--label-column", help="CSV data: the column holding labels")
    _add_config_options(f, FeaturesConfig, "feature-extraction options")

    c = sub.add_parser(
        "compare", help="machine learning or deep learning? learning curves of classical, feature and fine-tuning approaches",
    )
    c.add_argument("data", help="folder of class folders, folder with train/ val/ test/, or a CSV/TSV of path,label")
    c.add_argument(
        "--models", nargs="+", default=["resnet18"], metavar="NAME[=WEIGHTS]",
        help="pretrained networks to compare, each with its weights file after '=' (or use --pretrained) (default: resnet18)",
    )
    c.add_argument("--pretrained", action="store_true", help="download the official weights of models given without a file")
    c.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.25, 0.5, 1.0], help="shares of the training split (default: 0.1 0.25 0.5 1)")
    c.add_argument("--classifier", default="svm", help="classical model on the features: svm, logreg, knn, ridge (default: svm)")
    c.add_argument("--no-finetune", dest="finetune", action="store_false", help="leave out fine-tuning (the slowest approach)")
    c.add_argument("--finetune-epochs", type=int, help="epochs of each fine-tuning run (default: the finetune preset's)")
    c.add_argument("--scratch", action="store_true", help="also train a small cnn from scratch")
    c.add_argument("--scratch-epochs", type=int, default=15, help="epochs of each from-scratch run (default: 15)")
    c.add_argument("--test-fraction", type=float, default=0.2, help="test share of each class when the data has no split (default: 0.2)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--output", default="runs", help="folder for the comparison folder (default: runs)")
    c.add_argument("--name", help="comparison folder name (default: compare-<date>-<time>)")
    c.add_argument("--device", default="auto")
    c.add_argument("--workers", type=int, help="image-decoding processes (default: chosen for the machine)")
    c.add_argument("--path-column", help="CSV data: the column holding image paths")
    c.add_argument("--label-column", help="CSV data: the column holding labels")

    d = sub.add_parser("data", help="look at a data set before training on it")
    d_sub = d.add_subparsers(dest="data_command", parser_class=_Parser, required=True)
    dc = d_sub.add_parser("check", help="detection or segmentation labels: what was found, and what is wrong")
    dc.add_argument("data", help="COCO JSON (or its folder), YOLO folder with its YAML, Pascal VOC folder, or images/ + masks/")
    dc.add_argument("--task", choices=["detect", "segment"],
                    help="read the labels as objects (detect) or as a class per pixel (segment); default: from the layout "
                    "(a folder of mask images is read as semantic masks)")
    dc.add_argument("--ignore-index", type=int, default=255, help="segmentation: mask value that is not a class, -1 for none (default: 255)")
    _add_label_options(dc)

    e = sub.add_parser("evaluate", help="score a run's best checkpoint on its test split (or --data) and write report.html")
    e.add_argument("run_dir")
    e.add_argument("--data", help="another labelled data set to score instead of the test split")
    e.add_argument("--masks", help="segmentation: the mask folder of --data, when it is not beside the images")
    e.add_argument("--skip-unmasked", action="store_true", help="segmentation: leave images of --data without a mask out")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"])
    e.add_argument("--device", default="auto")

    p = sub.add_parser("predict", help="classify images, or detect objects in them (files, folders, globs), with a trained run")
    p.add_argument("run_dir")
    p.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--top-k", type=int, default=3, help="classes to list per image (default: 3)")
    p.add_argument(
        "--output",
        help="classification: write predictions to this .csv or .json (default: RUN_DIR/predictions.csv); detection: the "
        "folder for drawn images, detections.json (COCO results) and detections.csv; segmentation: the folder for mask PNGs "
        "(class indexes) and colour overlays (default: RUN_DIR/predictions)",
    )
    p.add_argument("--conf", type=float, default=0.25, help="detection: lowest score kept (default: 0.25)")
    p.add_argument("--iou", type=float, default=0.5, help="detection: IoU above which overlapping boxes are merged by NMS (default: 0.5)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto")

    m = sub.add_parser("models", help="list model names (deepfit, timm, torchvision)")
    m.add_argument("pattern", nargs="?", default="", help="only names containing this text")
    return parser


def _cmd_train(args: argparse.Namespace) -> None:
    from deepfit.api import ImageClassifier, resume

    fixed = {"command", "data", "preset", "path_column", "label_column", "no_evaluate", "version", "resume", "format", "classes",
             "masks", "colors", "skip_unmasked"}
    options = {k: v for k, v in vars(args).items() if k not in fixed}
    task = options.get("task", "classify")
    if task != "classify" and not args.resume:
        _train_labelled(args, options, task)
        return
    if args.resume:
        others = sorted(set(options) - {"epochs", "device"}) + (["DATA"] if args.data else []) + (["--preset"] if args.preset else [])
        if others:
            raise ConfigError(
                f"--resume keeps the run's own data and options; only --epochs and --device may change (got {', '.join(others)})"
            )
        clf = resume(args.resume, epochs=options.get("epochs"), device=options.get("device"))
    elif not args.data:
        raise ConfigError("deepfit train needs DATA (a folder or CSV), or --resume RUN_DIR")
    else:
        clf = ImageClassifier(options.pop("model", None), preset=args.preset, **options)
        clf.fit(args.data, path_column=args.path_column, label_column=args.label_column)
    from deepfit.engine.distributed import from_environment

    if not from_environment().main:  # under torchrun, rank 0 reports and evaluates
        return
    print(f"run folder: {clf.run_dir}")
    if not args.no_evaluate:
        _print_evaluation(clf.evaluate())


def _train_labelled(args: argparse.Namespace, options: dict[str, Any], task: str) -> None:
    """Detection, instance or semantic segmentation: labels read from COCO, YOLO, VOC or mask files."""
    from deepfit.api import ObjectDetector, SemanticSegmenter
    from deepfit.engine.distributed import from_environment

    if args.preset or args.path_column or args.label_column:
        raise ConfigError(f"--preset, --path-column and --label-column are for classification, not --task {task}")
    if not args.data:
        raise ConfigError(f"deepfit train --task {task} needs DATA (images with their labels)")
    model = options.pop("model", None)
    if task == "segment":
        _check_format(args.format, task)
        learner: Any = SemanticSegmenter(model, **options)
        learner.fit(args.data, masks=args.masks, format=args.format, classes=args.classes, colors=args.colors,
                    skip_unmasked=args.skip_unmasked)
    else:
        if args.masks or args.colors or args.skip_unmasked:
            raise ConfigError("--masks, --colors and --skip-unmasked are for --task segment (instance-mask PNGs are found in DATA/masks)")
        _check_format(args.format, task)
        learner = ObjectDetector(model, **options)
        learner.fit(args.data, format=args.format, classes=args.classes)
    if not from_environment().main:
        return
    print(f"run folder: {learner.run_dir}")
    if not args.no_evaluate:
        _print_evaluation(learner.evaluate())


def _check_format(fmt: str | None, task: str) -> None:
    """--format names one of the formats of the reader the task uses (the CLI offers both readers' formats)."""
    if fmt is None:
        return
    if task == "segment":
        from deepfit.tasks.segment.data import FORMATS as formats
    else:
        from deepfit.tasks.detect.data import FORMATS as formats
    if fmt not in formats:
        raise ConfigError(f"--format {fmt} is not a {task} format; use one of {', '.join(formats)}")


def _print_evaluation(evaluation: Any) -> None:
    if "miou" in evaluation.metrics:  # semantic segmentation
        m = evaluation.metrics
        print(f"{evaluation.split}: mIoU {m['miou']:.4f}, mean Dice {m['mean_dice']:.4f}, pixel accuracy {m['pixel_accuracy']:.2%}; "
              f"report: {evaluation.report}")
    elif hasattr(evaluation, "box"):  # detection
        text = f"box mAP {evaluation.box['map']:.4f} (mAP50 {evaluation.box['map50']:.4f})"
        if evaluation.mask:
            text += f", mask mAP {evaluation.mask['map']:.4f} (mAP50 {evaluation.mask['map50']:.4f})"
        print(f"{evaluation.split}: {text}; report: {evaluation.report}")
    else:
        print(f"{evaluation.split} accuracy {evaluation.metrics['accuracy']:.2%}; report: {evaluation.report}")


def _cmd_features(args: argparse.Namespace) -> None:
    from deepfit.api import fit_features

    fixed = {"command", "data", "path_column", "label_column", "version"}
    options = {k: v for k, v in vars(args).items() if k not in fixed}
    result = fit_features(args.data, path_column=args.path_column, label_column=args.label_column, **options)
    n, d = result.features.features.shape
    print(f"features: {n} images x {d} dimensions ({result.features.reused} reused from the cache)")
    if result.run_dir is not None:
        print(f"run folder: {result.run_dir}")
        print(f"classifier: {result.classifier.describe()}")
    if result.evaluation is not None:
        print(f"{result.evaluation.split} accuracy {result.evaluation.metrics['accuracy']:.2%}; report: {result.evaluation.report}")
    if args.__dict__.get("export"):
        print(f"features written to {args.export}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from deepfit.data.sources import discover
    from deepfit.workflows.compare import compare

    result = compare(
        args.data, models=args.models, pretrained=args.pretrained, fractions=args.fractions, classifier=args.classifier,
        finetune=args.finetune, finetune_epochs=args.finetune_epochs, scratch=args.scratch, scratch_epochs=args.scratch_epochs,
        test_fraction=args.test_fraction, seed=args.seed, output=args.output, name=args.name, device=args.device,
        workers=args.workers, catalog=discover(args.data, path_column=args.path_column, label_column=args.label_column),
    )
    print("\n".join(result.verdict))
    print(f"table: {result.folder / 'results.csv'}; report: {result.report}")


def _cmd_data_check(args: argparse.Namespace) -> None:
    from deepfit.log import setup_logging

    setup_logging()  # each problem the reader finds is a warning naming its file
    task = args.task
    if task is None:
        from deepfit.tasks.segment.data import FORMATS, holds_semantic_masks

        fmt = args.format
        task = ("segment" if fmt in FORMATS and fmt != "coco" else "detect") if fmt else (
            "segment" if args.masks or args.colors or holds_semantic_masks(args.data) else "detect")
    _check_format(args.format, task)
    if task == "segment":
        _check_segmentation(args)
    else:
        if args.masks or args.colors or args.skip_unmasked:
            raise ConfigError("--masks, --colors and --skip-unmasked are for segmentation masks (--task segment)")
        _check_detection(args)


def _check_segmentation(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from deepfit.tasks.segment.data import read_segmentation, summarize

    dataset = read_segmentation(args.data, masks=args.masks, format=args.format, classes=args.classes, colors=args.colors,
                                ignore_value=None if args.ignore_index < 0 else args.ignore_index, max_bad=1.0,
                                skip_unmasked=args.skip_unmasked)
    summary = summarize(dataset)
    console = Console()
    console.print(f"{summary['format']} segmentation masks ({summary['kind']}) in {summary['root']}: {summary['images']} images "
                  f"with a usable mask, {len(dataset.classes)} classes" + (f"; ignored value {dataset.ignore_value}" if dataset.ignore_value is not None else ""))
    if summary.get("splits"):
        console.print("splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    table = Table(title="pixels per class")
    table.add_column("class")
    table.add_column("mask value", justify="right")
    table.add_column("share of pixels", justify="right")
    for (name, share), value in zip(summary["pixel_share"].items(), dataset.values, strict=True):
        table.add_row(name, str(value), f"{share:.2%}")
    console.print(table)
    for kind, files in summary["problems"].items():
        console.print(f"{kind}: {len(files)}")
        for f in files[:50]:
            console.print(f"  {f}", markup=False, highlight=False)
        if len(files) > 50:
            console.print(f"  ... and {len(files) - 50} more")


def _check_detection(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from deepfit.tasks.detect.data import read_detection, summarize
    summary = summarize(read_detection(args.data, format=args.format, classes=args.classes))
    console = Console()
    console.print(
        f"{summary['format']} labels in {summary['root']}: {summary['images']} images, {summary['objects']} objects in "
        f"{summary['classes']} classes" + (" (with masks)" if summary["has_masks"] else "")
    )
    if summary["splits"]:
        console.print("splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    table = Table(title="objects per class")
    table.add_column("class")
    table.add_column("objects", justify="right")
    for name, count in summary["objects_per_class"].items():
        table.add_row(name, str(count))
    console.print(table)
    console.print(f"images with no objects: {summary['images_without_objects']}; crowd objects: {summary['crowd_objects']}")


def _cmd_predict(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from deepfit.runs.folder import run_folder, run_task
    from deepfit.tasks.classify.predict import Predictor, expand_paths, write_predictions

    task = run_task(args.run_dir)
    if task == "segment":
        _predict_masks(args)
        return
    if task != "classify":
        _predict_detections(args)
        return
    predictor = Predictor.from_run(args.run_dir, args.checkpoint, args.device)
    predictions, failed = predictor.predict_files(expand_paths(args.paths), top_k=args.top_k)
    table = Table(title=f"{len(predictions)} images")
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    table.add_column(f"top {args.top_k}")
    for p in predictions:
        others = ", ".join(f"{label} {prob:.1%}" for label, prob in p.top[1:])
        table.add_row(p.source, p.label, f"{p.probability:.1%}", others)
    Console().print(table)
    out = Path(args.output) if args.output else run_folder(args.run_dir) / "predictions.csv"
    out = write_predictions(predictions, out)
    print(f"predictions written to {out}" + (f"; {len(failed)} unreadable files skipped" if failed else ""))


def _predict_detections(args: argparse.Namespace) -> None:
    from deepfit.tasks.classify.predict import expand_paths
    from deepfit.tasks.detect.workflow import predict_to_folder

    out, results, failed = predict_to_folder(
        args.run_dir, expand_paths(args.paths), args.output, conf=args.conf, iou=args.iou, checkpoint=args.checkpoint,
        device=args.device,
    )
    objects = sum(len(r["boxes"]) for r in results)
    print(f"{objects} objects in {len(results)} images (score >= {args.conf}); drawn images, detections.json and detections.csv "
          f"in {out}" + (f"; {len(failed)} unreadable files skipped" if failed else ""))


def _predict_masks(args: argparse.Namespace) -> None:
    from deepfit.tasks.classify.predict import expand_paths
    from deepfit.tasks.segment.workflow import predict_to_folder

    out, done, failed = predict_to_folder(args.run_dir, expand_paths(args.paths), args.output, checkpoint=args.checkpoint, device=args.device)
    print(f"{len(done)} images segmented: mask PNGs (class indexes, class colours as palette) and colour overlays in {out}"
          + (f"; {len(failed)} unreadable files skipped" if failed else ""))


def _cmd_models(args: argparse.Namespace) -> None:
    from deepfit.models.factory import list_models
    from deepfit.tasks.segment.model import list_segmenters

    for source, names in list_models(args.pattern).items():
        print(f"{source} ({len(names)}): {' '.join(names)}")
    segmenters = [n for n in list_segmenters() if args.pattern in n]
    if segmenters:
        print(f"segmentation, --task segment ({len(segmenters)}): {' '.join(segmenters)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from deepfit import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "quickstart":
            from deepfit.workflows.quickstart import quickstart

            result, evaluation = quickstart(output=args.output)
            print(f"run folder: {result.run_dir}")
            print(f"test accuracy {evaluation.metrics['accuracy']:.2%}; open the report: {evaluation.report}")
        elif args.command == "train":
            _cmd_train(args)
        elif args.command == "features":
            _cmd_features(args)
        elif args.command == "compare":
            _cmd_compare(args)
        elif args.command == "data":
            _cmd_data_check(args)
        elif args.command == "evaluate":
            from deepfit.runs.folder import run_task
            from deepfit.tasks.classify.evaluate import evaluate

            task = run_task(args.run_dir)
            if task == "segment":
                from deepfit.tasks.segment.workflow import evaluate_segmenter

                _print_evaluation(evaluate_segmenter(args.run_dir, args.data, checkpoint=args.checkpoint, device=args.device, masks=args.masks,
                                                     skip_unmasked=args.skip_unmasked))
            elif task != "classify":
                from deepfit.tasks.detect.workflow import evaluate_detector

                _print_evaluation(evaluate_detector(args.run_dir, args.data, checkpoint=args.checkpoint, device=args.device))
            else:
                _print_evaluation(evaluate(args.run_dir, args.data, checkpoint=args.checkpoint, device=args.device))
        elif args.command == "predict":
            _cmd_predict(args)
        elif args.command == "models":
            _cmd_models(args)
    except DeepfitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
