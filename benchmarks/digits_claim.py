"""SPLIT's claim on the embedded digits: do the clusters follow the digit rather than the colour?

Three subcommands, each a sequence of `split-train` / `split-evaluate` runs in child processes.
Each training run's CPU time is therefore measured on its own (the child's user + system time),
and an interrupted experiment resumes run by run from the runs' checkpoints:

    search       trains settings of `gmvae` and `lggmvae` on a dataset with a "validation" split
                 (`split-data digits --validation_fraction 0.15`) and scores their clusters on
                 that split only, at several points of training (the learning curves).
    compare      trains the `digits-gmvae-long` and `digits-split-gmvae-long` presets with the
                 same steps and seeds, evaluates each on the test split (`split-evaluate`: clusters,
                 random assignment, k-means on pixels and on z_g, NMI with each local factor) and
                 writes one table of the mean and spread over the seeds.
    disentangle  trains the digit classifier once and `digits-split-vae-long` per seed, and writes
                 the disentanglement table (paper Table 1) with its mean and spread over the seeds.

Usage (the commands behind README's "Results on the embedded digits"):
    split-data digits --output data/digits-val --validation_fraction 0.15
    python -m benchmarks.digits_claim search --data data/digits-val --output runs/claim/search \\
        --steps 1000 --curve_every 500 --setting preset: \\
        --setting paper:cluster_kl=example,local_beta_scale=1.0
    split-data digits --output data/digits
    python -m benchmarks.digits_claim compare --data data/digits --output runs/claim/compare --seeds 0 1 2
    python -m benchmarks.digits_claim disentangle --data data/digits --output runs/claim/disentangle --seeds 0 1 2

A setting is `NAME:FIELD=VALUE,FIELD=VALUE`, with the config field names of `split-train`
(`NAME:` alone trains the preset unchanged). Results are appended to `OUTPUT/results.jsonl`, one
JSON object per evaluation, and the tables are rewritten from it after each run; a rerun skips
what is already recorded for the same setting, model, seed and step count.

The search scores its curve points in its own process (no k-means, so faster than
`split-evaluate`), and reaches each point by resuming the run: a resumed run reseeds its input
order (trainer/loop.py), and its CPU time includes each resume's start-up and tracing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

from trainer import config as config_module

CLUSTER_PRESETS = {"gmvae": "digits-gmvae-long", "lggmvae": "digits-split-gmvae-long"}
DISENTANGLEMENT_PRESET = "digits-split-vae-long"
FACTORS = ("background_hue", "foreground_hue", "background_kind")
RESULTS_NAME = "results.jsonl"
# Config fields this command sets itself (--steps, --seed(s), one checkpoint per curve point).
DRIVER_FIELDS = ("training_steps", "seed", "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class Setting:
    """A named set of config overrides."""

    name: str
    overrides: dict

    def flags(self) -> list[str]:
        flags = []
        for field, value in self.overrides.items():
            if isinstance(value, bool):
                flags.append(f"--{field}" if value else f"--no-{field}")
            else:
                flags += [f"--{field}", str(value)]
        return flags


def _field_types() -> dict[str, str]:
    types = {}
    for config_class in (config_module.ModelConfig, config_module.TrainConfig):
        for field in dataclasses.fields(config_class):
            types[field.name] = field.type if isinstance(field.type, str) else field.type.__name__
    return types


def parse_setting(text: str) -> Setting:
    """Parse `NAME:FIELD=VALUE,...` into a Setting; raise ValueError naming the flag on bad input."""
    name, separator, body = text.partition(":")
    if not separator or not name:
        raise ValueError(f"--setting {text!r}: expected NAME:FIELD=VALUE,... (NAME: alone for no changes)")
    types = _field_types()
    overrides = {}
    for item in filter(None, body.split(",")):
        field, equals, value = item.partition("=")
        if not equals or field not in types:
            raise ValueError(f"--setting {text!r}: {item!r} is not FIELD=VALUE with a config field of split-train")
        if field in DRIVER_FIELDS:
            raise ValueError(f"--setting {text!r}: {field} is set by this command's own flags")
        kind = types[field]
        try:
            if kind == "bool":
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                overrides[field] = value.lower() == "true"
            else:
                overrides[field] = {"int": int, "float": float, "str": str}[kind](value)
        except ValueError:
            raise ValueError(f"--setting {text!r}: {field} needs a {kind}, got {value!r}") from None
    return Setting(name, overrides)


def _command(name: str) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), name)]


def run_child(arguments: list[str], log_path: str) -> float:
    """Run one command with its output appended to `log_path`; return its CPU seconds.

    Raises RuntimeError naming the command and the log on a non-zero exit status.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "a") as log:
        status = subprocess.run(arguments, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if status != 0:
        raise RuntimeError(f"{' '.join(arguments[:2])} exited with status {status}; see {log_path}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def train(preset: str, data_dir: str, run_dir: str, setting: Setting, seed: int, steps: int) -> float:
    """Train (or resume) `run_dir` to `steps`; return the CPU seconds this call used."""
    os.makedirs(run_dir, exist_ok=True)
    arguments = _command("split-train") + [
        "--preset", preset, "--data", data_dir, "--run_dir", run_dir, "--seed", str(seed),
        "--training_steps", str(steps), "--checkpoint_every", str(steps), *setting.flags()]
    return run_child(arguments, os.path.join(run_dir, "train.log"))


def cluster_scores(run_dir: str, data_dir: str, split: str) -> dict:
    """Score a mixture run's clusters on `split`: the clustering scores and NMI with each factor.

    Lighter than `split-evaluate` (no k-means), for the learning curves of the search.
    """
    from preprocessing import schema
    from trainer import evaluation, loop, metrics

    model, config, _ = loop.load_trained_model(run_dir)
    manifest = schema.read_manifest(data_dir)
    arrays = evaluation.encode_split(model, config, data_dir, manifest, split)
    scores = metrics.clustering_scores(arrays["cluster"], arrays["labels"], config.model.y_size, manifest.num_classes)
    factors = {name[len(schema.FACTOR_PREFIX):]: value for name, value in arrays.items()
               if name.startswith(schema.FACTOR_PREFIX)}
    scores["factor_nmi"] = metrics.factor_nmi(arrays["cluster"], factors)
    scores["chance"] = metrics.random_assignment_scores(arrays["labels"], config.model.y_size, manifest.num_classes,
                                                        seed=0)
    return scores


def _check_step(run_dir: str, step: int) -> None:
    """Raise RuntimeError when the run's newest checkpoint is not at `step` (an older, longer run)."""
    from trainer import evaluation

    found = evaluation.checkpoint_step(run_dir)
    if found != step:
        raise RuntimeError(f"{run_dir}: newest checkpoint is at step {found}, expected {step}. The folder contains"
                           " a longer run of the same name; use another --output or setting name")


def _append(output: str, record: dict) -> None:
    with open(os.path.join(output, RESULTS_NAME), "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def read_results(output: str) -> list[dict]:
    path = os.path.join(output, RESULTS_NAME)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _done(records: list[dict], **keys) -> bool:
    return any(all(record.get(key) == value for key, value in keys.items()) for record in records)


def _format(values: Sequence[float], decimals: int = 3) -> str:
    # One value, or the same value from every seed (chance and k-means on pixels use a fixed seed).
    if len(values) == 1 or max(values) == min(values):
        return f"{values[0]:.{decimals}f}"
    return f"{np.mean(values):.{decimals}f} ± {np.std(values, ddof=1):.{decimals}f}"


def _markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write(output: str, name: str, text: str) -> None:
    path = os.path.join(output, name)
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


# --- search ------------------------------------------------------------------------------------

def search(args: argparse.Namespace) -> None:
    settings = [parse_setting(text) for text in args.setting]
    points = list(range(args.curve_every, args.steps, args.curve_every)) + [args.steps]
    for setting in settings:
        for model in args.models:
            run_dir = os.path.join(args.output, setting.name, f"{model}-s{args.seed}")
            for step in points:
                records = read_results(args.output)
                if _done(records, setting=setting.name, overrides=setting.overrides, model=model, seed=args.seed,
                         step=step):
                    continue
                start = time.perf_counter()
                cpu = train(CLUSTER_PRESETS[model], args.data, run_dir, setting, args.seed, step)
                wall = time.perf_counter() - start
                _check_step(run_dir, step)
                scores = cluster_scores(run_dir, args.data, args.split)
                _append(args.output, {"setting": setting.name, "overrides": setting.overrides, "model": model,
                                      "seed": args.seed, "step": step, "split": args.split, "train_cpu_s": cpu,
                                      "train_wall_s": wall, **scores})
                print(f"{setting.name} {model} step {step}: NMI {scores['nmi']:.3f}, majority"
                      f" {scores['majority_accuracy']:.3f}, background hue NMI"
                      f" {scores['factor_nmi'].get('background_hue', float('nan')):.3f}", flush=True)
                _write(args.output, "search.md", search_table(read_results(args.output)))


def search_table(records: list[dict]) -> str:
    rows = []
    for record in sorted(records, key=lambda r: (r["setting"], r["model"], r["seed"], r["step"])):
        rows.append({
            "setting": record["setting"],
            "changes": ", ".join(f"{key}={value}" for key, value in sorted(record["overrides"].items())) or "(preset)",
            "model": record["model"], "seed": record["seed"], "step": record["step"],
            "NMI digit": f"{record['nmi']:.3f}", "majority acc": f"{record['majority_accuracy']:.3f}",
            "NMI bg hue": f"{record['factor_nmi'].get('background_hue', float('nan')):.3f}",
            "NMI fg hue": f"{record['factor_nmi'].get('foreground_hue', float('nan')):.3f}",
            "clusters used": record["clusters_used"],
            "train CPU s (cumulative)": "",
        })
    cumulative: dict = {}
    for row, record in zip(rows, sorted(records, key=lambda r: (r["setting"], r["model"], r["seed"], r["step"]))):
        key = (record["setting"], record["model"], record["seed"])
        cumulative[key] = cumulative.get(key, 0.0) + record["train_cpu_s"]
        row["train CPU s (cumulative)"] = f"{cumulative[key]:.0f}"
    split = records[0]["split"] if records else "validation"
    return (f"# Search on the {split} split\n\n"
            + _markdown(rows, list(rows[0]) if rows else ["setting"]))


# --- compare -----------------------------------------------------------------------------------

def compare(args: argparse.Namespace) -> None:
    setting = parse_setting(args.setting)
    for seed in args.seeds:
        for model, preset in CLUSTER_PRESETS.items():
            records = read_results(args.output)
            if _done(records, model=model, seed=seed, steps=args.steps):
                continue
            run_dir = os.path.join(args.output, f"{model}-s{seed}")
            start = time.perf_counter()
            cpu = train(preset, args.data, run_dir, setting, seed, args.steps)
            wall = time.perf_counter() - start
            evaluate_cpu = run_child(_command("split-evaluate") + ["--run_dir", run_dir, "--split", "test"],
                                     os.path.join(run_dir, "evaluate.log"))
            with open(os.path.join(run_dir, "metrics.json")) as handle:
                metrics = json.load(handle)
            _append(args.output, {"model": model, "seed": seed, "steps": args.steps, "train_cpu_s": cpu,
                                  "train_wall_s": wall, "evaluate_cpu_s": evaluate_cpu, "metrics": metrics})
            print(f"{model} seed {seed}: NMI {metrics['clusters']['nmi']:.3f}, majority"
                  f" {metrics['clusters']['majority_accuracy']:.3f} ({cpu:.0f} CPU s)", flush=True)
            _write(args.output, "comparison.md", comparison_table(read_results(args.output)))


def comparison_table(records: list[dict]) -> str:
    """One row per method: the models' clusters, then random assignment and k-means of each model."""
    rows = []
    sources = [("clusters", "{model} clusters"), ("chance", "random assignment to K = {clusters}"),
               ("kmeans_pixels", "k-means on pixels, K = {clusters}"), ("kmeans_z_g", "k-means on {model} z_g")]
    for key, title in sources:
        listed: set[str] = set()
        for model in CLUSTER_PRESETS:
            runs = [record for record in records if record["model"] == model]
            if not runs:
                continue
            # Random assignment and k-means on pixels depend only on K and the test split.
            name = title.format(model=model, clusters=runs[0]["metrics"].get("num_clusters"))
            if name in listed:
                continue
            listed.add(name)
            scores = [record["metrics"][key] for record in runs]
            row = {"method": name, "seeds": len(runs)}
            for column, name in (("majority_accuracy", "majority acc"), ("hungarian_accuracy", "Hungarian acc"),
                                 ("nmi", "NMI digit"), ("ari", "ARI"), ("clusters_used", "clusters used")):
                values = [score.get(column) for score in scores]
                decimals = 1 if column == "clusters_used" else 3
                row[name] = _format(values, decimals) if None not in values else "n/a"
            if key == "clusters":
                for factor in FACTORS:
                    row[f"NMI {factor}"] = _format([record["metrics"]["cluster_factor_nmi"][factor] for record in runs])
                row["train CPU s"] = _format([record["train_cpu_s"] for record in runs], 0)
            rows.append(row)
    columns = ["method", "seeds", "majority acc", "Hungarian acc", "NMI digit", "ARI", "clusters used"]
    columns += [f"NMI {factor}" for factor in FACTORS] + ["train CPU s"]
    steps = sorted({record["steps"] for record in records})
    return (f"# GMVAE and SPLIT-GMVAE on the embedded digits, test split ({', '.join(map(str, steps))} steps;"
            " mean ± sample std over seeds)\n\n" + _markdown(rows, columns))


# --- disentangle -------------------------------------------------------------------------------

def disentangle(args: argparse.Namespace) -> None:
    setting = parse_setting(args.setting)
    os.makedirs(args.output, exist_ok=True)
    classifier_dir = os.path.join(args.output, "classifier")
    if not os.path.exists(os.path.join(classifier_dir, "classifier.json")):
        epochs = [] if args.classifier_epochs is None else ["--epochs", str(args.classifier_epochs)]
        run_child(_command("split-classifier") + ["--data", args.data, "--output", classifier_dir, *epochs,
                                                  "--overwrite"],
                  os.path.join(args.output, "classifier.log"))
    for seed in args.seeds:
        if _done(read_results(args.output), model="lgvae", seed=seed, steps=args.steps):
            continue
        run_dir = os.path.join(args.output, f"lgvae-s{seed}")
        cpu = train(DISENTANGLEMENT_PRESET, args.data, run_dir, setting, seed, args.steps)
        run_child(_command("split-evaluate") + ["--run_dir", run_dir, "--classifier_dir", classifier_dir],
                  os.path.join(run_dir, "evaluate.log"))
        with open(os.path.join(run_dir, "disentanglement.json")) as handle:
            results = json.load(handle)
        _append(args.output, {"model": "lgvae", "seed": seed, "steps": args.steps, "train_cpu_s": cpu,
                              "disentanglement": results})
        accuracy = results["accuracy"]
        print(f"lgvae seed {seed}: reconstructions {accuracy['reconstructions']['mean']:.3f}, random z_l"
              f" {accuracy['random_z_l']['mean']:.3f}, random z_g {accuracy['random_z_g']['mean']:.3f}", flush=True)
        _write(args.output, "disentanglement.md", disentanglement_summary(read_results(args.output)))


def disentanglement_summary(records: list[dict]) -> str:
    runs = [record["disentanglement"] for record in records]
    conditions = list(runs[0]["accuracy"])
    row = {"seeds": len(runs), "chance": _format([run["chance"] for run in runs])}
    for condition in conditions:
        row[condition] = _format([run["accuracy"][condition]["mean"] for run in runs])
    reconstructions = [run["accuracy"]["reconstructions"]["mean"] for run in runs]
    row["random z_l / reconstructions"] = _format(
        [run["accuracy"]["random_z_l"]["mean"] / max(value, 1e-12) for run, value in zip(runs, reconstructions)])
    steps = sorted({record["steps"] for record in records})
    return (f"# SPLIT-VAE disentanglement on the embedded digits, test split ({', '.join(map(str, steps))} steps;"
            " classifier accuracy, mean ± sample std over seeds)\n\n" + _markdown([row], list(row)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.digits_claim", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    search_parser = commands.add_parser("search", help="settings scored on the validation split")
    search_parser.add_argument("--setting", action="append", required=True, help="NAME:FIELD=VALUE,...; repeatable")
    search_parser.add_argument("--models", nargs="+", default=list(CLUSTER_PRESETS), choices=list(CLUSTER_PRESETS))
    search_parser.add_argument("--steps", type=int, default=2000)
    search_parser.add_argument("--curve_every", type=int, default=500)
    search_parser.add_argument("--seed", type=int, default=0)
    search_parser.add_argument("--split", default="validation",
                               help="split to score (default: validation; never tune on test)")
    compare_parser = commands.add_parser("compare", help="gmvae against lggmvae on the test split over seeds")
    disentangle_parser = commands.add_parser("disentangle", help="SPLIT-VAE's disentanglement table over seeds")
    for sub in (compare_parser, disentangle_parser):
        sub.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        sub.add_argument("--setting", default="preset:", help="overrides for every run, NAME:FIELD=VALUE,...")
    compare_parser.add_argument("--steps", type=int, default=None, help="default: the presets' step count")
    disentangle_parser.add_argument("--steps", type=int, default=None, help="default: the preset's step count")
    disentangle_parser.add_argument("--classifier_epochs", type=int, default=None,
                                    help="default: split-classifier's (the paper's 20)")
    for sub in (search_parser, compare_parser, disentangle_parser):
        sub.add_argument("--data", required=True, help="digits dataset folder (split-data digits)")
        sub.add_argument("--output", required=True, help="folder for the runs, results.jsonl and the tables")
    args = parser.parse_args(argv)

    from trainer import presets

    if getattr(args, "steps", 1) is None:
        preset = DISENTANGLEMENT_PRESET if args.command == "disentangle" else CLUSTER_PRESETS["lggmvae"]
        args.steps = presets.get_preset(preset).train.training_steps
    try:
        if args.command == "search":
            for text in args.setting:
                parse_setting(text)
        else:
            parse_setting(args.setting)
    except ValueError as error:
        parser.error(str(error))
    os.makedirs(args.output, exist_ok=True)
    {"search": search, "compare": compare, "disentangle": disentangle}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
