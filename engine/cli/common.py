"""What several groups of subcommands share: the --model flag and its model slot."""
from __future__ import annotations

import argparse


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="a .gguf file, a model folder, a hub id, or 'tiny'; default: bundled")


def _slot(args):
    from ..models import ModelSlot, load

    return ModelSlot(args.model, loader=lambda spec: load(spec))
