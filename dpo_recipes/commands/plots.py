"""`make plots RUN=<dir>`: PNG training curves of a run from its trainer_state.json, into <dir>/plots.

    python -m dpo_recipes.commands.plots RUN_DIR
"""

from __future__ import annotations

from dpo_recipes.cli import CommandParser
from dpo_recipes.errors import exit_on_user_error
from dpo_recipes.report.run_record import plot_run


@exit_on_user_error
def main(argv: list[str] | None = None) -> list:
    parser = CommandParser(prog="python -m dpo_recipes.commands.plots", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder with trainer_state.json")
    written = plot_run(parser.parse_args(argv).run_dir)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
