"""One module per ``streamedge`` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``, and imports nothing heavy at module level (the parser
imports every command module to build ``--help``). To add a command, write a
module and list it in :data:`COMMANDS`.
"""

COMMANDS = (
    "streamedge.commands.run",
    "streamedge.commands.check_config",
    "streamedge.commands.demo",
    "streamedge.commands.stats",
    "streamedge.commands.worker",
    "streamedge.commands.bench",
    "streamedge.commands.calibrate",
)
