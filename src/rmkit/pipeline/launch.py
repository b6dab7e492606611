"""Entry point of a pipeline train stage under ``accelerate launch`` (one per process)::

    accelerate launch --config_file CONFIG -m rmkit.pipeline.launch DIR/STAGE/.rmkit-launch.json [--resume]

The JSON file holds the stage's resolved config (references substituted, paths absolute) as
written by the runner; every process validates it for its world size and calls
:func:`rmkit.training.train`. The main process writes ``train_summary.json`` for the runner.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rmkit.pipeline.launch")
    parser.add_argument("config", help="the stage's .rmkit-launch.json")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    from rmkit.cli.main import setup_logging
    from rmkit.config.validate import validate_config
    from rmkit.errors import RmkitError
    from rmkit.training import train
    from rmkit.training.config import TrainConfig
    from rmkit.utils.console import is_main_process
    from rmkit.utils.io import read_json, write_json_atomic

    setup_logging()
    try:
        spec = read_json(args.config)
        cfg = validate_config(TrainConfig, spec["config"], f"stage '{spec.get('stage')}'")
        summary = train(cfg, resume=args.resume)
    except RmkitError as e:
        logging.getLogger(__name__).error("error: %s", e)
        return 1
    if is_main_process():
        write_json_atomic(Path(cfg.output) / "train_summary.json", summary)
    return 0


if __name__ == "__main__":  # pragma: no cover - run by accelerate launch
    sys.exit(main())
