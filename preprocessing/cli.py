"""`split-data NAME --output DIR [...]`: prepare one dataset as TFRecord shards and a manifest.

Each dataset module exposes `add_arguments(parser)` and `run(args, beam_argv)`; flags that a
dataset does not declare are passed to Beam untouched, so the standard pipeline options work:

    split-data digits --output /tmp/digits                       # DirectRunner
    split-data digits --output gs://BUCKET/digits --runner DataflowRunner \\
        --project PROJECT --region REGION --temp_location gs://BUCKET/tmp
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Dataset name -> module; imported only when chosen, so one dataset's heavy imports do not
# slow the others.
DATASETS: dict[str, str] = {
    "digits": "preprocessing.digits",
    "svhn": "preprocessing.svhn",
    "celeba": "preprocessing.celeba",
    "cub-sprites": "preprocessing.cub",
    "multibird": "preprocessing.multibird",
    "multidigit": "preprocessing.multibird",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="split-data",
        description="Prepare a dataset as TFRecord shards plus dataset.json with Apache Beam. "
                    "Unknown flags are Beam pipeline options (--runner, --project, --direct_num_workers, ...).")
    subparsers = parser.add_subparsers(dest="dataset", metavar="NAME", required=True)
    for name, module_name in DATASETS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # A dataset whose module is not part of this installation.
        subparser = subparsers.add_parser(name, help=getattr(module, "HELP", None))
        subparser.add_argument("--output", required=True, help="output folder, local or gs://")
        subparser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
        subparser.add_argument("--num_shards", type=int, default=4, help="shards per split (at least 1)")
        subparser.add_argument("--compression", choices=["none", "gzip"], default="none",
                               help="TFRecord compression of the shards")
        module.add_arguments(subparser, name)
        subparser.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, beam_argv = parser.parse_known_args(argv)
    if args.num_shards < 1:
        parser.error(f"--num_shards must be at least 1, got {args.num_shards}")
    try:
        args.module.run(args, beam_argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"split-data {args.dataset}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
