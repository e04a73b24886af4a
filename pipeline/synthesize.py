"""`spd synth`: write the synthetic datasets (params.synth), or one dataset with --out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.config import Params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="write one dataset here instead of params synth.out / synth.cross.out")
    parser.add_argument("--seed", type=int, help="with --out: the seed (default synth.seed)")
    parser.add_argument("--layout", choices=["lip", "atr"], default="lip", help="with --out: on-disk layout")
    parser.add_argument(
        "--domain", choices=["base", "shifted"], default="base", help="with --out: image statistics"
    )
    parser.add_argument(
        "--train", type=int, help="with --out, lip layout: train images (default synth.train)"
    )
    parser.add_argument("--val", type=int, help="with --out, lip layout: val images (default synth.val)")
    parser.add_argument(
        "--count", type=int, help="with --out: total images (atr); lip: train images, val = count // 5"
    )
    parser.add_argument("--image-size", type=int, help="longest image side (default synth.image_size)")


def _write(out: str, progress_desc: str, **kwargs: object) -> dict[str, int]:
    from tqdm import tqdm

    from spd.data.synth import write_dataset

    count = kwargs.get("count")
    if count is None:
        total = kwargs["train"] + kwargs["val"]  # type: ignore[operator]
    else:  # lip layout: count train images and a fifth of that for val
        total = count if kwargs["layout"] == "atr" else count + max(count // 5, 1)  # type: ignore[operator]
    t0 = time.perf_counter()
    with tqdm(total=total, desc=progress_desc, unit="img", leave=False) as bar:
        counts = write_dataset(out, progress=lambda n: bar.update(1), **kwargs)  # type: ignore[arg-type]
    print(f"spd synth: wrote {counts} to {out} in {time.perf_counter() - t0:.1f} s")
    return counts


def run(params: Params, args: argparse.Namespace) -> int:
    from spd.errors import SpdError

    cfg = params.synth
    size = args.image_size if args.image_size is not None else cfg.image_size
    if size < 32:
        raise SpdError(f"--image-size: expected an integer >= 32, got {size}")
    for name in ("train", "val", "count"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SpdError(f"--{name}: expected a positive integer, got {value}")
    if args.out:
        _write(
            str(Path(args.out)),
            f"synth {args.layout}/{args.domain}",
            seed=cfg.seed if args.seed is None else args.seed,
            layout=args.layout,
            domain=args.domain,
            train=args.train if args.train is not None else cfg.train,
            val=args.val if args.val is not None else cfg.val,
            count=args.count,
            image_size=size,
        )
        return 0
    _write(
        cfg.out,
        "synth lip",
        seed=cfg.seed,
        layout="lip",
        domain="base",
        train=cfg.train,
        val=cfg.val,
        count=None,
        image_size=size,
    )
    if cfg.cross.enabled:
        _write(
            cfg.cross.out,
            "synth atr/shifted",
            seed=cfg.cross.seed,
            layout="atr",
            domain="shifted",
            train=cfg.cross.count,
            val=0,
            count=cfg.cross.count,
            image_size=size,
        )
    return 0
