"""CLI subcommands: one module per command, each with ``register(add)`` where
``add(name, handler, help) -> argparse.ArgumentParser`` creates the subparser (with
``--json``) and ``handler(args) -> exit code`` does the work. Keep handlers thin: parse
arguments into the operation's parameter dataclass and call one logic/core function."""

COMMANDS = ("info", "demo", "scan", "importcmd", "enhance", "register", "segment", "brainmask", "models", "monitor",
            "batch", "exportdicom", "pacs")
