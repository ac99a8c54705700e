"""The command line: `main` (entry point), shared `options`, and one module per command group
(`run`: models, generate, bench, serve; `train`: distill, evaluate-drafter; `analysis`: advise,
profile, simulate, report)."""


def main(argv=None) -> None:
    """The `minedraft` entry point (see minedraft.cli.main)."""
    from minedraft.cli.main import main as _main
    _main(argv)
