"""CLI subcommands, each a module with add_parser(subparsers) and run(args) -> int."""
