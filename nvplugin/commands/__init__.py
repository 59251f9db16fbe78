"""CLI subcommands that live in their own modules: each has add_parser(subparsers) and run(args)."""
