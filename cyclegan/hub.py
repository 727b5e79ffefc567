"""Publish a model folder to the Hugging Face Hub and fetch one back:
`python -m cyclegan.hub push DIR USER/NAME` and `python -m cyclegan.hub pull USER/NAME --out DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import prog
from .files import one_line, write_atomic
from .model import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, CycleGAN, model_card, resolve_files


def push(folder: str, repo_id: str, private: bool = False, dtype: str = "float16", regenerate_card: bool = False,
         token: str | None = None) -> str:
    """Check that `folder` loads, then upload it (weights re-encoded as `dtype`) with its README.md as
    the model card, kept as edited; a card is generated from config.json when the folder has none or
    `regenerate_card`. `token`: the Hub token to push with (default: `hf auth login`'s or HF_TOKEN).
    Returns the commit URL."""
    from huggingface_hub import get_token

    if not Path(folder).is_dir():  # the user's own mistake first, then what the Hub needs
        raise FileNotFoundError(f"{folder}: no such model folder")
    model = CycleGAN.from_pretrained(folder)
    token = token or get_token()
    # Say what is missing before any upload: the Hub itself would answer with a bare 401.
    if token is None:
        raise PermissionError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)")
    card = Path(folder) / CARD_NAME
    keep = card.is_file() and not regenerate_card
    return model.push_to_hub(repo_id, private=private, token=token, dtype=dtype,
                             card=card.read_text() if keep else None)


def pull(repo_id: str, out: str, revision: str | None = None) -> Path:
    """Download a Hub model repo into the local model folder `out` (files as published, README included)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    config_path, weights_path = resolve_files(repo_id, revision)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in (config_path, weights_path):
        write_atomic(out_dir / src.name, src.read_bytes())
    model = CycleGAN.from_pretrained(out_dir)  # refuse a repo whose files do not make a model
    try:
        card = Path(hf_hub_download(repo_id, CARD_NAME, revision=revision)).read_bytes()
    except EntryNotFoundError:  # no card on the Hub, or offline with an uncached one: write ours
        card = model_card(model.config, model.info).encode()
    write_atomic(out_dir / CARD_NAME, card)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("python -m cyclegan.hub"), description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("push", help="upload a model folder (token from `hf auth login` or HF_TOKEN)")
    p.add_argument("folder", help=f"model folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    p.add_argument("repo_id", help="Hub repo, e.g. yourname/horse2zebra (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="precision of the uploaded weights (default: float16, half the download)")
    p.add_argument("--regenerate-card", action="store_true",
                   help=f"write the model card anew from {CONFIG_NAME} instead of uploading the folder's {CARD_NAME}")
    p = commands.add_parser("pull", help="download a Hub model repo into a local model folder")
    p.add_argument("repo_id")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    args = parser.parse_args(argv)

    from huggingface_hub.errors import HfHubHTTPError

    try:
        if args.command == "push":
            print(push(args.folder, args.repo_id, args.private, args.dtype, args.regenerate_card))
        else:
            print(pull(args.repo_id, args.out, revision=args.revision))
    # OSError covers missing files, tokens and Hub answers; the bases of HfHubHTTPError include the
    # Hub client's HTTP library error, which its connection errors derive from.
    except (OSError, ValueError, *HfHubHTTPError.__bases__) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # a missing extra is a one-line message, as for the console command
    from .cli import run
    run("hub")
