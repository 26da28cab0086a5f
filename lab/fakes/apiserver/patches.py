"""The PATCH bodies the fake applies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

from lab.fakes.apiserver.kinds import JSON, ApiFailure


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge is served as this: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: JSON, ops: list[JSON]) -> JSON:
    """RFC 6902 subset: add, remove, replace, test."""
    doc = copy.deepcopy(target)
    for op in ops:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[int(step)] if isinstance(parent, list) else parent[step]
        last = path[-1]
        name = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if name == "add":
                parent.insert(index, op["value"])
            elif name == "remove":
                parent.pop(index)
            elif name == "replace":
                parent[index] = op["value"]
            elif name == "test" and parent[index] != op["value"]:
                raise ApiFailure(422, "Invalid", f"test operation failed at {op['path']}")
        elif name in ("add", "replace"):
            if name == "replace" and last not in parent:
                raise ApiFailure(422, "Invalid", f"replace: missing path {op['path']}")
            parent[last] = op["value"]
        elif name == "remove":
            if last not in parent:
                raise ApiFailure(422, "Invalid", f"remove: missing path {op['path']}")
            del parent[last]
        elif name == "test" and parent.get(last) != op["value"]:
            raise ApiFailure(422, "Invalid", f"test operation failed at {op['path']}")
    return doc

