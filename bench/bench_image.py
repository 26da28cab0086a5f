"""Image size per layer: the project's Dockerfile built with a real dockerd and BuildKit.

The base (`python:3.11-slim-bookworm`) is not pullable here, so the build runs on the lab's
mmdebstrap stand-in (`lab.runtimes.imagebuild`); what the Dockerfile adds on top of its base is the
same on either, so "added to the base" is the number to compare, and the total on the
upstream base is that plus the upstream base's own size. Optional: without root in a private
mount namespace (dockerd writes /etc/docker), or without mmdebstrap/dockerd, the section
says "skipped" and why.

    unshare --mount --propagation private -- .venv/bin/python -m bench.bench_image
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench import Row

SECTION = "image"
MB = 1_000_000  # docker reports decimal megabytes
# Measured on the Dockerfile before issue 13 (pip-installed wheels + an apt-get layer for
# util-linux), same stand-in base: 174.2 MB + 80.0 MB.
BEFORE_ADDED = 254.3


def _skip(why: str) -> list[Row]:
    return [Row(SECTION, "docker build of the Dockerfile", f"skipped: {why}")]


def rows() -> list[Row]:
    from lab.isolation.sandbox import in_private_mount_namespace
    from lab.runtimes.imagebuild import have_image_tools

    if os.geteuid() != 0 or not in_private_mount_namespace():
        return _skip("needs root in a private mount namespace (run scripts/bench)")
    missing = have_image_tools()
    if missing is not None:
        return _skip(missing)
    return _measure()


def _measure() -> list[Row]:
    from lab.isolation.sandbox import isolate_node_paths
    from lab.procs import become_subreaper
    from lab.runtimes.dockerd import layout, run_dockerd
    from lab.runtimes.imagebuild import (
        build_image,
        image_size,
        import_standin,
        layers,
        standin_rootfs,
    )

    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        base_dir = Path(tmp)
        began = time.monotonic()
        rootfs = standin_rootfs()
        standin_seconds = time.monotonic() - began
        with isolate_node_paths(base_dir / "box", {}), run_dockerd(
            layout(base_dir / "dockerd")
        ) as daemon:
            base = import_standin(daemon, rootfs)
            built = build_image(daemon, base)
            total, base_size = image_size(daemon, built.tag), image_size(daemon, base)
            ours = [layer for layer in layers(daemon, built.tag) if layer.size][:-1]
    out = [Row(SECTION, "docker build: BuildKit, pip from PyPI, no cache",
               f"{built.seconds:.0f} s", "a few minutes")]
    for layer in ours:
        what = layer.created_by.replace("/bin/sh -c ", "").split(" # ")[0][:50]
        out.append(Row(SECTION, f"layer: {what}", f"{layer.size / MB:.1f} MB"))
    added = (total - base_size) / MB
    out.append(Row(SECTION, f"added to the base (before: {BEFORE_ADDED} MB, pip + apt layers)",
                   f"{added:.1f} MB", "as low as deps allow"))
    out.append(Row(SECTION, f"total on the stand-in base ({base_size / MB:.1f} MB, mmdebstrap "
                   f"{standin_seconds:.0f} s)", f"{total / MB:.1f} MB"))
    return out

if __name__ == "__main__":
    for row in rows():
        print(f"{row.metric:<62} {row.value:<40} {row.target}")
