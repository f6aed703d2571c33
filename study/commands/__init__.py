"""The commands of `study`, one module each, imported only when that command runs (study/cli.py
parses the arguments and dispatches): `study status` never imports plotly, `study --help`
nothing heavy. Each module has `main(args) -> exit code`; user errors are raised as StudyError
and become exit 2 in the CLI.

    run launch status cancel report dashboard bench data      the commands
    options                                                   what several of them check
"""
