"""deploy/dev-certs.sh, the throwaway PKI and tokens deploy/README.md has people try the secured deployment with:
certificates that chain to the CA and name every address the manifests make clients dial."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.deploy.conftest import container, find


def openssl(*args: str | Path) -> str:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_certificates_chain_to_the_ca_and_match_their_keys(dev_certs: Path) -> None:
    for name, usage in (("tls", "TLS Web Server Authentication"), ("client", "TLS Web Client Authentication")):
        assert openssl("verify", "-CAfile", dev_certs / "ca.crt", dev_certs / f"{name}.crt").strip().endswith("OK")
        crt_key = openssl("x509", "-in", dev_certs / f"{name}.crt", "-noout", "-pubkey")
        assert crt_key == openssl("pkey", "-in", dev_certs / f"{name}.key", "-pubout"), f"{name}.key"
        assert usage in openssl("x509", "-in", dev_certs / f"{name}.crt", "-noout", "-ext", "extendedKeyUsage")


def test_server_certificate_names_every_address_clients_dial(
    dev_certs: Path, built: dict[str, list[dict[str, Any]]]
) -> None:
    sans = openssl("x509", "-in", dev_certs / "tls.crt", "-noout", "-ext", "subjectAltName")
    names = set(re.findall(r"DNS:([\w.*-]+)", sans))
    objects = built["cpu"]
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    services = [s for s in objects if s["kind"] == "Service" and "grpc" in {p["name"] for p in s["spec"]["ports"]}]
    assert services
    for service in services:
        name = service["metadata"]["name"]
        # How a pod reaches a Service: the short name in its namespace, or qualified from anywhere.
        for form in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"):
            assert form in names, form
    # The Locust workers dial the master's --host; `kubectl port-forward` users dial localhost.
    master = container(find(built["locust"], "Deployment", "locust-master")["spec"]["template"]["spec"], "locust")
    host = next(a.split("=", 1)[1] for a in master["args"] if a.startswith("--host="))
    assert host.rsplit(":", 1)[0] in names and "localhost" in names


def test_tokens_are_one_per_client_one_a_line(dev_certs: Path) -> None:
    tokens = (dev_certs / "tokens").read_text().splitlines()
    clients = [(dev_certs / f"{c}.token").read_text().strip() for c in ("locust", "client")]
    assert tokens == clients and len(set(tokens)) == 2
    assert all(re.fullmatch(r"[0-9a-f]{64}", t) for t in tokens), "256 random bits each"
