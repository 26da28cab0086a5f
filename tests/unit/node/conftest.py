"""The `node` fixture of the engine tests (tests/unit/node/engine_world.py)."""

from tests.unit.node.engine_world import node

__all__ = ["node"]
