"""Command-line error reporting shared by the entry points: one line, no traceback.

A user's mistake (a misspelt config key, a config file that is not there, a workdir in use,
an unreadable checkpoint) is reported as `ERROR: <what, naming the key or file>` on stderr
with exit status 2: `parse_flags` for the flags and the config, `user_errors` around a
command's work. `--verbosity=1` (absl) shows the traceback instead, for bug reports.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence

from absl import flags

from grefel_jax.errors import UserError

EXIT_USAGE = 2


def fail(message: str) -> None:
    """Prints `ERROR: message` (one line) to stderr and exits with status 2."""
    print(f"ERROR: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors(*also: type[Exception]) -> Iterator[None]:
    """The expected errors of a command's work, each reported by `fail` in one line.

    Expected are a `UserError` (a dataset not prepared, a workdir in use, a checkpoint that
    is missing or does not fit, ...), a ValueError (a config value: the message names the
    key) and the types in `also` (a KeyError's message loses its quotes). Anything else is a
    bug and keeps its traceback; so does every error with `--verbosity>=1`.
    """
    try:
        yield
    except (UserError, ValueError, *also) as e:
        if _verbose():
            raise
        fail(str(e).strip("'\"") if isinstance(e, KeyError) else str(e))


def _verbose() -> bool:
    """`--verbosity>=1` (absl's flag; unparsed flags, as under tests, count as 0)."""
    return (
        flags.FLAGS.is_parsed()
        and "verbosity" in flags.FLAGS
        and flags.FLAGS["verbosity"].value >= 1
    )


# absl's help flags print the usage and exit with status 1 (as for a usage error); asking
# for help is not an error.
HELP_FLAGS = ("-?", "-help", "--help", "-helpshort", "--helpshort", "-helpfull", "--helpfull")


def parse_flags(argv: Sequence[str]) -> list[str]:
    """`absl.app.run(main, flags_parser=cli.parse_flags)`: flag and config errors in one line.

    ml_collections reports a misspelt `--config.a.b=...` key as an AttributeError with a
    multi-line traceback and a config file that does not load as an OSError; both become one
    line that names the flag and, where ml_collections has one, the suggested key. A run
    config's values are checked as it is read (`settings.check_config`: a head with 0
    anchors, a negative temperature, ...), before anything is built or compiled. `--help`
    (and `-h`) exits with status 0.
    """
    # absl knows -? but not the usual -h (before a "--": what follows is not ours).
    argv = list(argv)
    ours = argv.index("--") if "--" in argv else len(argv)
    if "h" not in flags.FLAGS:
        argv[:ours] = ["--help" if a == "-h" else a for a in argv[:ours]]
    try:
        remaining = flags.FLAGS(list(argv))
        if "config" in flags.FLAGS and _is_config_file_flag(flags.FLAGS["config"]):
            # A config file that failed to load raises on first use, not while parsing.
            flags.FLAGS.config.keys()
            _check_run_config(flags.FLAGS.config)
        return remaining
    except SystemExit as e:
        if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in argv[1:ours]):
            sys.exit(0)
        raise
    except flags.Error as e:
        fail(_flag_error_message(str(e)))
    except (AttributeError, KeyError) as e:
        fail(_unknown_key_message(str(e), argv))
    except OSError as e:
        fail(_config_file_message(str(e)))
    except ValueError as e:  # raised by a config's get_config(arg)
        fail(f"--config: {e}")
    return []


def _is_config_file_flag(flag) -> bool:
    """True for an ml_collections `--config FILE` flag that was given (`data.prepare` has a
    plain string `--config`, the builder config)."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    return isinstance(flag.parser, ConfigFileFlagParser) and flag.value is not None


def _check_run_config(config) -> None:
    """`settings.check_config` for a training / evaluation run config (one with a model
    section); other configs (none so far) are left to their command."""
    model = getattr(config, "model", None)
    if model is None or not all(k in model for k in ("variant", "head_preset", "head", "backbone")):
        return
    from grefel_jax import settings  # jax: imported only once the flags are parsed

    try:
        settings.check_config(config)
    except ValueError as e:
        message = str(e)
        # "model.head.num_anchors=0 must be > 0." is the flag --config.model.head.num_anchors.
        if message.startswith("model."):
            fail(f"--config.{message}")
        fail("--" + message if message.startswith("config.") else f"--config: {message}")


def _flag_error_message(text: str) -> str:
    """An error raised inside a config file's get_config() arrives with its traceback as
    text: keep the flag and the exception's own message."""
    if "Traceback" not in text:
        return text
    flag = text.split(": Error whilst parsing")[0]
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f"{flag.removeprefix('flag ')}: {last.split(': ', 1)[-1]}"


def _unknown_key_message(text: str, argv: Sequence[str]) -> str:
    # ml_collections: '\'lr_backbon\'\nDid you mean "lr_backbone" instead of "lr_backbon"?'
    found = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', text)
    key = found.group(2) if found else (re.findall(r"(\w+)\\?'", text) or [None])[0]
    if key is None:
        return text
    flag = next(
        (a.split("=")[0] for a in argv if a.startswith("--config.") and key in a), "--config"
    )
    message = f"{flag}: the config has no key {key!r}"
    if found:
        message += f"; did you mean {found.group(1)!r}?"
    return message


def _config_file_message(text: str) -> str:
    paths = re.findall(r"^\s+(\S+\.py)$", text, flags=re.MULTILINE)
    reason = re.findall(r"\[Errno \d+\] ([^:]+)", text)
    if paths:
        return f"--config {paths[0]}: {reason[0] if reason else 'cannot be loaded'}."
    return text
