"""``crowdtrain`` command line: registers the subcommands, loads --config files, maps errors to exit codes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from crowdtrain.errors import CrowdtrainError, ExitCode, UsageError

SUBCOMMANDS = ("coordinator", "join", "status", "dashboard", "demo", "identity", "invite")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, documented exit code
        self.exit(ExitCode.USAGE, f"crowdtrain: error: {message}\n")


def _modules() -> dict[str, Any]:
    from crowdtrain.cli import coordinator, dashboard, demo, identity, invite, join, status

    return {"coordinator": coordinator, "join": join, "status": status, "dashboard": dashboard, "demo": demo,
            "identity": identity, "invite": invite}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = _Parser(prog="crowdtrain", description="Train deep learning models together over the internet.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = {}
    for name, module in _modules().items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                         help="read options from a TOML file (keys as the long option names); flags win")
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logs, hivemind's included")
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
        commands[name] = sub
    return parser, commands


def _config_defaults(sub: argparse.ArgumentParser, path: Path, command: str) -> dict[str, Any]:
    """TOML keys (``target-batch-size`` or ``target_batch_size``, top level or in a ``[command]`` table)."""
    from crowdtrain.config import load_toml

    raw = load_toml(path)
    values = {k: v for k, v in raw.items() if not (isinstance(v, dict) and k in SUBCOMMANDS)}
    values.update(raw.get(command, {}))
    dests = {action.dest: action for action in sub._actions}
    defaults = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in dests or dest in ("help", "config"):
            raise UsageError(f"config file {path}: unknown option {key!r} for 'crowdtrain {command}'")
        action = dests[dest]
        if action.type is not None and isinstance(value, str):
            value = action.type(value)
        if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
            value = value if isinstance(value, list) else [value]
        defaults[dest] = value
    return defaults


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        sub = commands[args.command]
        sub.set_defaults(**_config_defaults(sub, args.config, args.command))
        args = parser.parse_args(argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_args(argv)
        code = args.handler(args)
        return int(code or ExitCode.OK)
    except CrowdtrainError as e:
        print(f"crowdtrain: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("crowdtrain: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as e:
        argv = sys.argv[1:] if argv is None else argv
        if "-v" in argv or "--verbose" in argv:
            raise
        print(f"crowdtrain: unexpected error: {type(e).__name__}: {e} (run with --verbose for details)",
              file=sys.stderr)
        return int(ExitCode.ERROR)


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
