"""`helm install --dry-run` of the chart, pointed at the test API server.

The client-side dry run renders with the release's real name and namespace and stores
nothing; it must give exactly what `helm template` gives (what tests/unit/test_chart.py
compares with manifests/) and must not need the cluster to answer anything. A server-side
dry run needs discovery (/version, /api, /apis), apps/v1 and RBAC kinds and Secrets for the
release record, which lab/fakes/apiserver/ does not serve: that part is left to a real cluster.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.fakes.apiserver import FakeApiServer, write_kubeconfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ca-trust-agent"
HELM = ROOT / ".lab-cache" / "helm-v4.1.4" / "helm"


def test_a_client_dry_run_install_renders_the_template_and_writes_nothing(tmp_path: Path) -> None:
    if not HELM.is_file():
        pytest.fail("helm is missing: scripts/bootstrap fetches it (scripts/fetch-helm)")
    with FakeApiServer() as api:
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, api.url)
        args = [str(CHART), "-n", "ca-trust-agent", "-f", str(CHART / "ci/ca-sources-values.yaml")]
        installed = subprocess.run(
            [
                str(HELM),
                "install",
                "ca-trust-agent",
                *args,
                "--dry-run=client",
                "--kubeconfig",
                str(kubeconfig),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert installed.returncode == 0, installed.stderr
        writes = [r for r in api.requests() if r.method != "GET"]
        assert writes == []
    release = json.loads(installed.stdout)
    assert release["info"]["status"] == "pending-install"
    template = subprocess.run(
        [str(HELM), "template", "ca-trust-agent", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert [d for d in yaml.safe_load_all(release["manifest"]) if d] == [
        d for d in yaml.safe_load_all(template.stdout) if d
    ]
