"""The `hilserl` command: runs the suite's graphs and tools on machines without a ROS 2 distro."""
from __future__ import annotations

import argparse
import json
import sys

from hilserl.config import ConfigError, load_train_config


def _cmd_config(args) -> int:
    try:
        cfg = load_train_config(args.config)
    except ConfigError as exc:
        print(f'hilserl: invalid config: {exc}', file=sys.stderr)
        return 2
    print(json.dumps(cfg.to_dict(), indent=2))
    print(f'# config digest {cfg.digest()}', file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='hilserl', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('config', help='validate a training config and print it resolved')
    p.add_argument('--config', default=None, help='YAML file (default: built-in defaults)')
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
