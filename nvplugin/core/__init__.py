"""The pure core: plain immutable data and functions over it. No I/O, no asyncio.

Everything here is decided from its arguments alone, so it is unit-tested exhaustively and
shared by the agent, the CLI and the testing kit.
"""
