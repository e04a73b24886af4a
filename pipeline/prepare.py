"""`spd prepare`: pack prepare.main (and prepare.cross) into letterboxed arrays per split."""

from __future__ import annotations

import argparse
import time

from pipeline.config import Params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(params: Params, args: argparse.Namespace) -> int:
    from spd.data.prepare import prepare_sources

    cfg = params.prepare
    sources = [cfg.main] + ([cfg.cross] if cfg.cross is not None else [])
    t0 = time.perf_counter()
    result = prepare_sources(
        sources,
        cfg.image_size,
        cfg.bad_data,
        progress=not args.no_progress,
        log=lambda m: print(f"spd prepare: {m}"),
    )
    for out, manifests in result.items():
        counts = {split: m["num_samples"] for split, m in manifests.items()}
        skipped = sum(len(m["skipped"]) for m in manifests.values())
        print(f"spd prepare: {out}: {counts} at {cfg.image_size} px ({skipped} skipped)")
    print(f"spd prepare: done in {time.perf_counter() - t0:.1f} s")
    return 0
