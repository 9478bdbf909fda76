"""The `deepfit` command: a thin layer that builds a config and calls the Python API.

The `train` options are generated from `TrainConfig`'s fields, so the CLI, the API and the saved
config.json always use the same names, defaults and help.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from deepfit.cli_audit import add_audit_command, cmd_audit
from deepfit.cli_deploy import (
    add_deploy_commands,
    add_predict_options,
    cmd_benchmark,
    cmd_explain,
    cmd_export,
)
from deepfit.cli_options import (
    add_config_options,
    add_task_options,
    add_verbosity,
    refuse_changes,
    task_option_names,
)
from deepfit.cli_parser import HintingParser
from deepfit.cli_serve import add_serve_command, cmd_serve
from deepfit.cli_tune import add_tune_command, cmd_tune
from deepfit.config import FeaturesConfig, OptionError
from deepfit.errors import ConfigError, DeepfitError, TrainingInterrupted
from deepfit.log import output_console, setup_logging, table_lines
from deepfit.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = HintingParser(prog="deepfit", description="Train, evaluate and use image classifiers, object detectors and instance or semantic "
                     "segmenters (a class for every image, boxes around objects, or a class for every pixel) from labelled "
                     "examples.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=HintingParser)

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
    t.add_argument("--rerun", metavar="RUN_DIR", help="train a run again in a new folder: its data, split, options and seed, bit for "
                   "bit (a --time-budget run step by step as it was recorded); --output, --name and --device may change")
    t.add_argument("--data-root", metavar="NEW", help="with --resume or --rerun: where the run's data is now, if it moved (keeps the split)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="a tested set of options to start from")
    t.add_argument("--no-evaluate", action="store_true", help="do not score the test split after training")
    add_task_options(t, "data", "how the data is read (each option is for the tasks it names)")
    add_config_options(t)
    add_tune_command(sub)

    f = sub.add_parser(
        "features", help="fit a classical model (svm, rbf, logreg, knn, ridge) on a network's or hand-made features, or export them",
    )
    f.add_argument("data", help="folder of class folders, folder with train/ val/ test/, or a CSV/TSV of path,label")
    f.add_argument("--path-column", help="CSV data: the column holding image (or sound file) paths")
    f.add_argument("--label-column", help="CSV data: the column holding labels")
    f.add_argument("--label-pattern", help="labels (and groups, splits) from file names: a regular expression with named "
                   "groups, e.g. '(?P<label>\\d)_(?P<group>[a-z]+)_\\d+\\.wav'")
    f.add_argument("--text-column", action="append", help="text data: the column holding the text (repeat to join several)")
    f.add_argument("--encoding", help="text data: the files' encoding (default utf-8)")
    add_config_options(f, FeaturesConfig, "feature-extraction options")

    c = sub.add_parser(
        "compare", help="machine learning or deep learning? learning curves of classical, feature and fine-tuning approaches",
    )
    c.add_argument("data", help="folder of class folders, folder with train/ val/ test/, or a CSV/TSV of path,label")
    c.add_argument(
        "--models", nargs="*", metavar="NAME[=WEIGHTS]",
        help="pretrained networks to compare, each with its weights file after '=' (or use --pretrained); on sound and "
             "text also a trained run's folder or hf:NAME_OR_FOLDER; none: only the baseline (and --scratch) (default: "
             "resnet18; on text hf:sentence-transformers/all-MiniLM-L6-v2)",
    )
    c.add_argument("--pretrained", action="store_true", help="download the official weights of models given without a file")
    c.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.25, 0.5, 1.0], help="shares of the training split (default: 0.1 0.25 0.5 1)")
    c.add_argument("--classifier", default="svm", help="classical model on network features: svm (linear), rbf (kernel "
                   "SVM), logreg, knn, ridge (default: svm)")
    c.add_argument("--baseline-classifier", help="classical model on the hand-made features (MFCC statistics on sound, "
                   "TF-IDF n-grams on text), as --classifier (default: rbf, the kernel SVM of classical pipelines; svm on text)")
    c.add_argument("--no-finetune", dest="finetune", action="store_false", help="leave out fine-tuning (the slowest approach)")
    c.add_argument("--finetune-epochs", type=int, help="epochs of each fine-tuning run (default: the finetune preset's)")
    c.add_argument("--scratch", action="store_true", help="also train a small cnn (soundcnn on sound) from scratch")
    c.add_argument("--scratch-epochs", type=int, default=15, help="epochs of each from-scratch run (default: 15)")
    c.add_argument("--test-fraction", type=float, default=0.2, help="test share of each class when the data has no split (default: 0.2)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--output", default="runs", help="folder for the comparison folder (default: runs)")
    c.add_argument("--name", help="comparison folder name (default: compare-<date>-<time>)")
    c.add_argument("--device", default="auto")
    c.add_argument("--workers", type=int, help="image-decoding processes (default: chosen for the machine)")
    c.add_argument("--path-column", help="CSV data: the column holding image (or sound file) paths")
    c.add_argument("--label-column", help="CSV data: the column holding labels")
    c.add_argument("--label-pattern", help="labels (and groups, splits) from file names: a regular expression with named groups")
    c.add_argument("--text-column", action="append", help="text data: the column holding the text (repeat to join several)")
    c.add_argument("--encoding", help="text data: the files' encoding (default utf-8)")
    c.add_argument("--modality", choices=("auto", "image", "sound", "text"), default="auto",
                   help="what the inputs are (default: found from DATA's files)")

    d = sub.add_parser("data", help="look at a data set before training on it")
    d_sub = d.add_subparsers(dest="data_command", parser_class=HintingParser, required=True)
    dc = d_sub.add_parser("check", help="detection or segmentation labels: what was found, and what is wrong")
    dc.add_argument("data", help="COCO JSON (or its folder), YOLO folder with its YAML, Pascal VOC folder, or images/ + masks/")
    dc.add_argument("--task", help="read the labels as this task's (detect, segment, ...); default: from the layout (image and "
                    "mask folders are semantic masks unless a classes.json names their objects; other labels are objects)")
    add_task_options(dc, "check", "how the labels are read (each option is for the tasks it names)")
    add_audit_command(d_sub)

    e = sub.add_parser("evaluate", help="score a run's best checkpoint on its test split (or --data) and write report.html")
    e.add_argument("run_dir", help="the run folder that `deepfit train` wrote (runs/<name>)")
    e.add_argument("--data", help="another labelled data set to score instead of the test split")
    e.add_argument("--data-root", metavar="NEW", help="where the run's data is now, if it moved (keeps its test split)")
    add_task_options(e, "evaluate", "how --data is read (each option is for the tasks it names)")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"])
    e.add_argument("--device", default="auto")

    p = sub.add_parser("predict", help="classify images, or detect objects in them (files, folders, globs), with a trained run")
    p.add_argument("run_dir", help="the run folder that `deepfit train` wrote (runs/<name>), or a checkpoint in it")
    p.add_argument("paths", nargs="*", help="image (or sound, or .txt) files, folders or glob patterns; for a text "
                   "classifier '-' reads one text per line from stdin")
    p.add_argument("--text", action="append", help="text classifiers: a text to classify (repeat the flag for more)")
    p.add_argument(
        "--output",
        help="classify: write predictions to this .csv or .json (default: RUN_DIR/predictions.csv); detect: the folder for drawn "
        "images, detections.json (COCO results) and detections.csv; segment: the folder for mask PNGs (class indexes) and "
        "colour overlays (default: RUN_DIR/predictions)",
    )
    add_task_options(p, "predict", "prediction options (each option is for the tasks it names)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto")
    add_predict_options(p)
    deploy = [*add_deploy_commands(sub), add_serve_command(sub)]

    m = sub.add_parser("models", help="list model names (deepfit, timm, torchvision)")
    m.add_argument("pattern", nargs="?", default="", help="only names containing this text")
    for command in (parser, q, t, f, c, dc, e, p, m, *deploy):
        add_verbosity(command)
    return parser


def _cmd_train(args: argparse.Namespace) -> None:
    from deepfit.api import Learner, rerun, resume
    from deepfit.engine.distributed import from_environment

    fixed = {"command", "data", "preset", "no_evaluate", "version", "resume", "rerun", "data_root"}
    given = {k: v for k, v in vars(args).items() if k not in fixed}
    data_names = task_option_names("data")
    data_options = {k: v for k, v in given.items() if k in data_names}
    options = {k: v for k, v in given.items() if k not in data_names}
    for flag, may_change in (("resume", ("epochs", "device")), ("rerun", ("output", "name", "device"))):
        if getattr(args, flag):
            refuse_changes(f"--{flag}", "the run's own data and options", may_change, sorted(set(given) - set(may_change))
                           + (["DATA"] if args.data else []) + (["--preset"] if args.preset else []))
    if args.resume:
        learner = resume(args.resume, epochs=options.get("epochs"), device=options.get("device"), data_root=args.data_root)
    elif args.rerun:
        learner = rerun(args.rerun, output=options.get("output"), name=options.get("name"), device=options.get("device"),
                        data_root=args.data_root)
    elif args.data_root:
        raise ConfigError("--data-root is for --resume or --rerun RUN_DIR: a new run reads DATA where it is")
    elif not args.data:
        raise ConfigError("deepfit train needs DATA (a folder or CSV of labelled examples), or --resume RUN_DIR")
    else:
        learner = Learner(options.pop("model", None), preset=args.preset, **options)
        learner.fit(args.data, **data_options)
    if not from_environment().main:  # under torchrun, rank 0 reports and evaluates
        return
    if learner.cv_result is not None:  # every fold was tested on its own fold already
        _print(learner.cv_result.headline())
        return
    print(f"run folder: {learner.run_dir}")
    if not args.no_evaluate:
        _print(learner.task.headline(learner.evaluate()))


def _print(*items: Any) -> None:
    """Text and rich tables to standard output: drawn on a terminal; to a file or a pipe, never wrapped, and each
    table as tab-separated lines (a "# title" line, a header, a row a line), so that grep and cut work on them."""
    from rich.table import Table

    console = output_console()
    for item in items:
        if isinstance(item, str):
            console.print(item, markup=False, highlight=False)
        elif not console.is_terminal and isinstance(item, Table):
            print("\n".join(table_lines(item)), flush=True)
        else:
            console.print(item)


def _cmd_features(args: argparse.Namespace) -> None:
    from deepfit.api_features import fit_features

    fixed = {"command", "data", "path_column", "label_column", "label_pattern", "text_column", "encoding", "version"}
    options = {k: v for k, v in vars(args).items() if k not in fixed}
    result = fit_features(args.data, path_column=args.path_column, label_column=args.label_column,
                          label_pattern=args.label_pattern, text_column=args.text_column, encoding=args.encoding, **options)
    n, d = result.features.features.shape
    noun = "clips" if result.features.sound else "texts" if result.features.text else "images"
    print(f"features: {n} {noun} x {d} dimensions ({result.features.reused} reused from the cache)")
    if result.run_dir is not None:
        print(f"run folder: {result.run_dir}")
        print(f"classifier: {result.classifier.describe()}")
    if result.evaluation is not None:
        print(f"{result.evaluation.split} accuracy {result.evaluation.metrics['accuracy']:.2%}; report: {result.evaluation.report}")
    if args.__dict__.get("export"):
        print(f"features written to {args.export}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from deepfit.tasks.classify.text import read_labelled
    from deepfit.workflows.compare import compare

    result = compare(
        args.data, models=args.models, pretrained=args.pretrained, fractions=args.fractions, classifier=args.classifier,
        baseline_classifier=args.baseline_classifier,
        finetune=args.finetune, finetune_epochs=args.finetune_epochs, scratch=args.scratch, scratch_epochs=args.scratch_epochs,
        test_fraction=args.test_fraction, seed=args.seed, output=args.output, name=args.name, device=args.device,
        workers=args.workers, modality=args.modality,
        catalog=read_labelled(args.data, args.modality, path_column=args.path_column, label_column=args.label_column,
                              label_pattern=args.label_pattern, text_column=args.text_column, encoding=args.encoding),
    )
    print("\n".join(result.verdict))
    print(f"table: {result.folder / 'results.csv'}; report: {result.report}")


def _cmd_data_check(args: argparse.Namespace) -> None:
    from deepfit.registry import get_task, task_names
    from deepfit.tasks.base import option_values, task_for_data

    setup_logging()  # each problem the reader finds is a warning naming its file
    options = {k: v for k, v in vars(args).items() if k in task_option_names("check")}
    if args.task:
        task = get_task(args.task)
    else:
        task = task_for_data(args.data, options)
        others = ", ".join(n for n in task_names() if n != task.name)
        _print(f"task: {task.name} ({task.title}), found from the layout; --task reads it as another's ({others})")

    options = option_values(task, options, (*task.data_options, *task.check_options), "data check")
    _print(*task.check_data(args.data, **options))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from deepfit.registry import get_task
    from deepfit.runs.folder import run_task
    from deepfit.workflows.evaluate import evaluate

    options = {k: v for k, v in vars(args).items() if k in task_option_names("evaluate")}
    evaluation = evaluate(args.run_dir, args.data, checkpoint=args.checkpoint, device=args.device, data_root=args.data_root,
                          **options)
    task = get_task(run_task(args.run_dir))
    _print(task.headline(evaluation))


def _cmd_predict(args: argparse.Namespace) -> None:
    from deepfit.workflows.predict import predict_files, predict_videos
    from deepfit.workflows.video import video_inputs

    options = {k: v for k, v in vars(args).items() if k in task_option_names("predict")}
    paths, texts = args.paths, list(args.text or [])
    if paths == ["-"]:  # one text a line from stdin
        paths, texts = [], texts + [line for line in sys.stdin.read().splitlines() if line.strip()]
    videos, paths = video_inputs(paths, args.source)
    if not paths and not texts and not videos:
        raise ConfigError("nothing to predict: give files, folders or glob patterns (or, for a text classifier, --text "
                          "or '-' to read stdin; for video, --source webcam:0 or a stream URL)")
    if videos:
        _print(*predict_videos(args.run_dir, videos, args.output, checkpoint=args.checkpoint, device=args.device,
                               backend=args.backend, every=args.every, max_fps=args.max_fps, max_frames=args.max_frames,
                               **options))
    elif args.every != 1 or args.max_fps or args.max_frames:
        raise ConfigError("--every, --max-fps and --max-frames are for video: give a video file or --source")
    if paths or texts:
        _print(*predict_files(args.run_dir, paths, args.output, checkpoint=args.checkpoint, device=args.device,
                              texts=texts, backend=args.backend, **options))


def _cmd_models(args: argparse.Namespace) -> None:
    from deepfit.registry import all_tasks

    sections = {heading: names for task in all_tasks() for heading, names in task.model_names(args.pattern).items() if names}
    if not sections:
        raise ConfigError(f"no model matches {args.pattern!r}" if args.pattern else "no models found")
    for heading, names in sections.items():  # one name a line, as it is chosen (--model NAME), under its section
        print(f"{heading} ({len(names)}):")
        print("\n".join(f"  {name}" for name in names))


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from deepfit.workflows.quickstart import quickstart

    result, evaluation = quickstart(output=args.output)
    print(f"run folder: {result.run_dir}")
    print(f"test accuracy {evaluation.metrics['accuracy']:.2%}; open the report: {evaluation.report}")


COMMANDS = {"quickstart": _cmd_quickstart, "train": _cmd_train, "features": _cmd_features, "compare": _cmd_compare,
            "data": lambda args: _print(*cmd_audit(args)) if args.data_command == "audit" else _cmd_data_check(args),
            "evaluate": _cmd_evaluate, "predict": _cmd_predict, "models": _cmd_models,
            "export": lambda args: _print(*cmd_export(args)), "benchmark": lambda args: _print(*cmd_benchmark(args)),
            "explain": lambda args: _print(*cmd_explain(args)), "serve": cmd_serve,
            "tune": lambda args: _print(*cmd_tune(args))}


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:  # before the parser, which imports the tasks (and torch)
        from deepfit.version import __version__

        print(__version__)
        return 0
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the command's own parser, whose hint names `deepfit COMMAND --help`
        parser.subcommand(args).error(f"unrecognized arguments: {' '.join(extras)}")
    quiet, verbose = vars(args).pop("quiet", False), vars(args).pop("verbose", False)
    setup_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO, choose=True)
    if args.version:
        from deepfit.version import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        COMMANDS[args.command](args)
    except DeepfitError as e:  # an option's error names its flag (--lr), the Python API's its keyword (lr)
        print(f"error: {e.cli_message() if isinstance(e, OptionError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if not isinstance(e, TrainingInterrupted):  # a stopped training has logged how to resume it
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deepfit models | head` closed the pipe: nothing more is wanted, so no traceback
        # Python flushes stdout again at exit, which would raise once more: point it at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a program a closed pipe stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
