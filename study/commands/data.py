"""`study data download`: for a machine with internet (a login node); compute nodes never
download."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive

from study import data
from study.commands.options import check_dir


def main(args: argparse.Namespace) -> int:
    check_dir("--root", args.root, write=True)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.dataset == "cifar10":
        datasets.CIFAR10(str(root), download=True)
    elif args.dataset == "cifar100":
        datasets.CIFAR100(str(root), download=True)
    else:
        download_and_extract_archive(data.TINYIMAGENET_URL, str(root))
    print(f"{args.dataset} is under {root}; point pipeline.data.root at it")
    return 0
